"""Checking Basic credentials without stalling the proxy.

Password hashes are slow on purpose (tens of milliseconds each), and a proxy serves thousands of
connections from one event loop, so this module keeps three promises:

- a hash never runs on the event loop: it runs in a small thread pool, with a semaphore bounding
  how many are in flight so a burst of logins (or an attacker guessing) queues instead of
  starving everything else;
- a sensor that reconnects every few seconds pays for its hash once: a verified credential is
  remembered for `cache_ttl` seconds, under an HMAC of the credential with a key that exists only
  in this process (a memory dump does not reveal passwords; the cache is useless elsewhere);
- the same credential arriving on many connections at once is verified once.

An `Authenticator` belongs to one config: the server builds a new one on reload and closes the old
one, so nothing here is global.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import structlog

from connectproxy.config.model import User
from connectproxy.credentials.passwords import (
    DUMMY_HASH,
    Htpasswd,
    HtpasswdError,
    check_hash_format,
    verify_password,
)

__all__ = ["Authenticator"]

DEFAULT_CACHE_SIZE: Final = 10_000
# How often the htpasswd file's metadata is looked at, at most.
HTPASSWD_CHECK_INTERVAL: Final = 1.0

# What identifies one version of a file: a rewrite in place changes mtime/size, a replacement by
# rename changes the inode. (A rewrite within one mtime tick keeping the size is not seen; mtime
# has nanosecond resolution on the file systems this runs on.)
_FileSignature = tuple[int, int, int, int]


def _file_signature(path: Path) -> _FileSignature:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


class Authenticator:
    """Verifies Basic credentials against `users` (first) and the htpasswd file."""

    def __init__(
        self,
        users: Sequence[User],
        htpasswd_file: Path | None,
        *,
        max_in_flight: int = 4,
        cache_ttl: float = 300.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the htpasswd file now, so a broken one is a config error (HtpasswdError) and
        not a surprise at the first login. ValueError for a malformed `password_hash`."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if cache_size < 0 or cache_ttl < 0:
            raise ValueError("cache_size and cache_ttl must not be negative")
        for user in users:
            if user.password_hash is not None:
                check_hash_format(user.password_hash)
        self._users = {user.name: user for user in users}
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._log = structlog.get_logger()

        self._htpasswd_file = htpasswd_file
        self._htpasswd: Htpasswd | None = None
        self._htpasswd_signature: _FileSignature | None = None
        self._next_htpasswd_check = clock() + HTPASSWD_CHECK_INTERVAL
        if htpasswd_file is not None:
            # Stat before reading: a change in between is then seen as a change next time.
            try:
                self._htpasswd_signature = _file_signature(htpasswd_file)
            except OSError as error:
                message = f"cannot read: {error.strerror or error}"
                raise HtpasswdError(message, str(htpasswd_file)) from None
            self._htpasswd = Htpasswd.load(htpasswd_file)

        self._cache_key_secret = os.urandom(32)
        # key -> expiry time. Insertion order is expiry order (the TTL is fixed and the clock
        # monotonic), so the oldest entry is always first: both eviction and expiry pop the front.
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        # Bumped whenever the credentials change, so a verification started before a reload
        # does not put its (possibly stale) result into the cache after it.
        self._generation = 0
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._executor = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix="connectproxy-auth"
        )

    async def verify(self, username: str, password: str) -> bool:
        """True iff a `users` entry's password_hash (or, for a name without one, the htpasswd
        file) accepts the password."""
        self._maybe_reload_htpasswd()
        key = self._cache_key(username, password)
        if self._cache_hit(key):
            return True
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._verify_in_thread(username, password, key))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda done: self._forget_in_flight(key, done))
        # shield: one caller giving up (its client went away) must not cancel the others' answer.
        return await asyncio.shield(pending)

    def verify_sync(self, username: str, password: str) -> bool:
        """The slow, blocking check; runs in a worker thread. Public so that tools and tests can
        call or wrap it (a subclass overriding it sees every cache miss).

        Unknown users cost one dummy hash of the default strength, so response time does not
        tell an attacker which user names exist. (An htpasswd user with a cheaper or dearer
        scheme than scrypt is still distinguishable from an unknown one by timing; that only
        reveals that the name exists, never anything about the password.)
        """
        user = self._users.get(username)
        if user is not None and user.password_hash is not None:
            return verify_password(password, user.password_hash)
        # Not a `users` entry, or one whose password the htpasswd file holds.
        htpasswd = self._htpasswd
        if htpasswd is not None:
            result = htpasswd.verify(username, password)
            if result is not None:
                return result
        verify_password(password, DUMMY_HASH)
        return False

    def close(self) -> None:
        """Stop the worker threads; verifications still queued are abandoned."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- slow path ------------------------------------------------------------------------------

    async def _verify_in_thread(self, username: str, password: str, key: bytes) -> bool:
        generation = self._generation
        # The pool has as many threads as the semaphore allows, so work never queues inside the
        # executor: whoever waits, waits here on the loop, in order, at no cost.
        async with self._semaphore:
            loop = asyncio.get_running_loop()
            accepted = await loop.run_in_executor(
                self._executor, self.verify_sync, username, password
            )
        if accepted and generation == self._generation:
            self._remember(key)
        return accepted

    def _forget_in_flight(self, key: bytes, done: asyncio.Future[bool]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        # Mark an error as seen: if every waiter was cancelled, nobody else will look at it.
        if not done.cancelled():
            done.exception()

    # --- cache ----------------------------------------------------------------------------------

    def _cache_key(self, username: str, password: str) -> bytes:
        # The user name is length-prefixed so that no (user, password) pair can collide with
        # another, whatever characters either contains.
        user = username.encode("utf-8", "surrogatepass")
        message = len(user).to_bytes(4, "big") + user + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key_secret, message, hashlib.sha256).digest()

    def _cache_hit(self, key: bytes) -> bool:
        now = self._clock()
        while self._cache:
            oldest, expiry = next(iter(self._cache.items()))
            if expiry > now:
                break
            del self._cache[oldest]
        return key in self._cache

    def _remember(self, key: bytes) -> None:
        if self._cache_size == 0 or self._cache_ttl == 0:
            return
        self._cache.pop(key, None)
        self._cache[key] = self._clock() + self._cache_ttl
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _forget_everything(self) -> None:
        self._cache.clear()
        self._in_flight.clear()
        self._generation += 1

    # --- htpasswd reload ------------------------------------------------------------------------

    def _maybe_reload_htpasswd(self) -> None:
        """Re-read the htpasswd file if it changed; a broken new version keeps the old entries.

        Called on every verify but looks at the file at most once per HTPASSWD_CHECK_INTERVAL;
        a stat and (rarely) reading a small file are cheap enough for the event loop. Each bad
        version is warned about once, not every second, and the next edit is picked up.
        """
        path = self._htpasswd_file
        now = self._clock()
        if path is None or now < self._next_htpasswd_check:
            return
        self._next_htpasswd_check = now + HTPASSWD_CHECK_INTERVAL
        try:
            signature = _file_signature(path)
        except OSError as error:
            if self._htpasswd_signature is not None:
                self._htpasswd_signature = None
                self._warn_reload_failed(
                    HtpasswdError(f"cannot read: {error.strerror or error}", str(path))
                )
            return
        if signature == self._htpasswd_signature:
            return
        self._htpasswd_signature = signature
        try:
            htpasswd = Htpasswd.load(path)
        except HtpasswdError as error:
            self._warn_reload_failed(error)
            return
        self._htpasswd = htpasswd
        self._forget_everything()
        self._log.info("htpasswd_reloaded", file=str(path), users=len(htpasswd.entries))

    def _warn_reload_failed(self, error: HtpasswdError) -> None:
        # The message names file and line, never a hash or a password.
        kept = 0 if self._htpasswd is None else len(self._htpasswd.entries)
        self._log.warning("htpasswd_reload_failed", error=str(error), kept_users=kept)
