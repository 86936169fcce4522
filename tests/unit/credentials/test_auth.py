"""The Authenticator: correctness, caching, concurrency bounds and htpasswd reloads.

Slow paths are observed through `CountingAuthenticator`, a subclass wrapping the public
`verify_sync` hook, so no internals are patched.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from connectproxy.config.model import User
from connectproxy.credentials.auth import Authenticator
from connectproxy.credentials.passwords import HtpasswdError, hash_password

# htpasswd -nbm bob secret / htpasswd -nbs carol secret (see test_passwords.py)
APR1_BOB_SECRET = "$apr1$6HtIzgeP$MMTI8Jl6pbkrOCtkppH991"
SHA_CAROL_SECRET = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="
# openssl passwd -apr1 -salt 6HtIzgeP changed  (same length as bob's line)
APR1_BOB_CHANGED = "$apr1$6HtIzgeP$ksUcuO.T1M/96KlogeN2c1"
# openssl passwd -1 -salt saltsalt secret
MD5_SECRET = "$1$saltsalt$9xy1btjgzLYfb7hivXtC//"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingAuthenticator(Authenticator):
    """Counts slow-path calls and the most that ran at once; can add a blocking delay."""

    delay = 0.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[str] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def verify_sync(self, username: str, password: str) -> bool:
        with self._lock:
            self.calls.append(username)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)  # blocking on purpose: it must not be on the loop
            return super().verify_sync(username, password)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def users() -> list[User]:
    return [
        User(name="alice", password_hash=hash_password("alice-pw")),
        User(name="bob", password_hash=hash_password("config-bob-pw")),
    ]


@pytest.fixture
def make() -> Iterator[Callable[..., CountingAuthenticator]]:
    """Builds authenticators and closes every one of them at the end of the test."""
    made: list[CountingAuthenticator] = []

    def build(*args: object, **kwargs: object) -> CountingAuthenticator:
        authenticator = CountingAuthenticator(*args, **kwargs)
        made.append(authenticator)
        return authenticator

    yield build
    for authenticator in made:
        authenticator.close()


def write(path: Path, text: str, stamp: int) -> None:
    """Rewrite a file and give it a distinct mtime, whatever the file system's granularity."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(stamp * 1_000_000_000, stamp * 1_000_000_000))


# --- who is accepted --------------------------------------------------------------------------


async def test_config_users(make: Callable[..., CountingAuthenticator], users: list[User]) -> None:
    auth = make(users, None)
    assert await auth.verify("alice", "alice-pw")
    assert not await auth.verify("alice", "alice-pW")
    assert not await auth.verify("alice", "")
    assert not await auth.verify("nobody", "alice-pw")


async def test_unknown_user_still_pays_for_a_hash(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    started = time.perf_counter()
    assert not await auth.verify("nobody", "whatever")
    unknown = time.perf_counter() - started
    started = time.perf_counter()
    assert not await auth.verify("alice", "whatever")
    known = time.perf_counter() - started
    # Same scrypt cost either way; generous bounds keep this stable on a busy machine.
    assert unknown > known / 4
    assert auth.calls == ["nobody", "alice"]


async def test_htpasswd_users(
    tmp_path: Path, make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"carol:{SHA_CAROL_SECRET}\ndave:{MD5_SECRET}\n", 1)
    auth = make(users, path)
    assert await auth.verify("carol", "secret")
    assert await auth.verify("dave", "secret")
    assert not await auth.verify("carol", "wrong")
    assert await auth.verify("alice", "alice-pw")


async def test_config_users_take_precedence(
    tmp_path: Path, make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"bob:{APR1_BOB_SECRET}\n", 1)
    auth = make(users, path)
    assert await auth.verify("bob", "config-bob-pw")
    assert not await auth.verify("bob", "secret")


async def test_an_entry_without_hash_takes_the_password_from_the_file(
    tmp_path: Path, make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    """`users` entries without password_hash only bind policies: the file holds the password,
    and a name the file lacks is refused after the same dummy hash as an unknown one."""
    path = tmp_path / "htpasswd"
    write(path, f"carol:{SHA_CAROL_SECRET}\n", 1)
    bound = [*users, User("carol", None, policies=("iot",)), User("ghost", None)]
    auth = make(bound, path)
    assert await auth.verify("carol", "secret")
    assert not await auth.verify("carol", "wrong")
    assert not await auth.verify("ghost", "secret")
    assert auth.calls[-1] == "ghost"  # the slow path ran for it, as for any unknown name
    no_file = make([User("carol", None)], None)
    assert not await no_file.verify("carol", "secret")


async def test_construction_refuses_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hash-password"):
        Authenticator([User(name="eve", password_hash="plaintext")], None)
    path = tmp_path / "htpasswd"
    write(path, "carol:plaintext\n", 1)
    with pytest.raises(HtpasswdError, match=r"htpasswd:1: unsupported"):
        Authenticator([], path)
    with pytest.raises(HtpasswdError, match="cannot read"):
        Authenticator([], tmp_path / "missing")
    with pytest.raises(ValueError, match="max_in_flight"):
        Authenticator([], None, max_in_flight=0)


# --- cache ------------------------------------------------------------------------------------


async def test_cache_hit_skips_the_slow_path(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    clock = FakeClock()
    auth = make(users, None, cache_ttl=300.0, clock=clock)
    assert await auth.verify("alice", "alice-pw")
    assert await auth.verify("alice", "alice-pw")
    assert await auth.verify("alice", "alice-pw")
    assert auth.calls == ["alice"]
    # A cached success for one password says nothing about another.
    assert not await auth.verify("alice", "alice-pw2")
    assert auth.calls == ["alice", "alice"]


async def test_failures_are_not_cached(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    assert not await auth.verify("alice", "wrong")
    assert not await auth.verify("alice", "wrong")
    assert auth.calls == ["alice", "alice"]


async def test_cache_entries_expire(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    clock = FakeClock()
    auth = make(users, None, cache_ttl=300.0, clock=clock)
    assert await auth.verify("alice", "alice-pw")
    clock.now += 299.0
    assert await auth.verify("alice", "alice-pw")
    assert len(auth.calls) == 1
    clock.now += 2.0
    assert await auth.verify("alice", "alice-pw")
    assert len(auth.calls) == 2


async def test_cache_is_bounded_oldest_evicted(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"a:{SHA_CAROL_SECRET}\nb:{SHA_CAROL_SECRET}\nc:{SHA_CAROL_SECRET}\n", 1)
    auth = make([], path, cache_size=2, clock=FakeClock())
    for user in ("a", "b", "c"):
        assert await auth.verify(user, "secret")
    assert await auth.verify("c", "secret")
    assert await auth.verify("b", "secret")
    assert auth.calls == ["a", "b", "c"]
    assert await auth.verify("a", "secret")  # evicted, verified again
    assert auth.calls == ["a", "b", "c", "a"]


async def test_user_password_boundary_is_unambiguous(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    """("a", "b\\0c") and ("a\\0b", "c") are different credentials, so no shared cache entry."""
    path = tmp_path / "htpasswd"
    write(path, f"a:{SHA_CAROL_SECRET}\n", 1)
    auth = make([], path, clock=FakeClock())
    assert not await auth.verify("a\0b", "c")
    assert not await auth.verify("a", "b\0c")
    assert await auth.verify("a", "secret")
    assert not await auth.verify("a\0secret", "")


async def test_concurrent_same_credential_verified_once(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    auth.delay = 0.05
    results = await asyncio.gather(*(auth.verify("alice", "alice-pw") for _ in range(10)))
    assert results == [True] * 10
    assert auth.calls == ["alice"]


async def test_one_waiter_cancelled_does_not_cancel_the_others(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    auth.delay = 0.1
    first = asyncio.create_task(auth.verify("alice", "alice-pw"))
    second = asyncio.create_task(auth.verify("alice", "alice-pw"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert auth.calls == ["alice"]


# --- concurrency ------------------------------------------------------------------------------


async def test_in_flight_bound_is_respected(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    lines = [f"user{i}:{SHA_CAROL_SECRET}" for i in range(20)]
    write(path, "\n".join(lines) + "\n", 1)
    auth = make([], path, max_in_flight=2)
    auth.delay = 0.02
    results = await asyncio.gather(*(auth.verify(f"user{i}", "secret") for i in range(20)))
    assert results == [True] * 20
    assert len(auth.calls) == 20
    assert auth.max_running == 2


async def test_slow_verify_does_not_block_the_loop(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    auth.delay = 0.3
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        assert await auth.verify("alice", "alice-pw")
    finally:
        ticking.cancel()
    # ~30 ticks fit into 0.3 s; had the verify run on the loop, there would be none.
    assert ticks >= 10


async def test_real_hash_does_not_block_the_loop(
    make: Callable[..., CountingAuthenticator], users: list[User]
) -> None:
    auth = make(users, None)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        for _ in range(3):
            assert not await auth.verify("alice", "not-cached")
    finally:
        ticking.cancel()
    # Three scrypt runs (~45 ms each here) happened while the ticker kept running.
    assert len(gaps) > 30


# --- htpasswd reload --------------------------------------------------------------------------


async def test_htpasswd_reloaded_on_change(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"carol:{SHA_CAROL_SECRET}\n", 1)
    clock = FakeClock()
    with capture_logs() as logs:
        auth = make([], path, clock=clock)
        assert await auth.verify("carol", "secret")

        write(path, f"dave:{MD5_SECRET}\n", 2)
        # Looked at no more than once a second.
        clock.now += 0.5
        assert not await auth.verify("dave", "secret")
        clock.now += 0.6
        assert await auth.verify("dave", "secret")
        # carol's cached success went with the reload.
        assert not await auth.verify("carol", "secret")
    assert [entry["event"] for entry in logs] == ["htpasswd_reloaded"]
    assert logs[0]["users"] == 1


async def test_htpasswd_same_size_rewrite_is_seen(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    """A changed password keeps the line length; the mtime alone must trigger the reload."""
    path = tmp_path / "htpasswd"
    write(path, f"bob:{APR1_BOB_SECRET}\n", 1)
    clock = FakeClock()
    auth = make([], path, clock=clock)
    assert await auth.verify("bob", "secret")
    write(path, f"bob:{APR1_BOB_CHANGED}\n", 2)
    clock.now += 1.5
    assert not await auth.verify("bob", "secret")
    assert await auth.verify("bob", "changed")


async def test_htpasswd_replaced_by_rename_is_seen(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"bob:{APR1_BOB_SECRET}\n", 1)
    clock = FakeClock()
    auth = make([], path, clock=clock)
    assert await auth.verify("bob", "secret")
    replacement = tmp_path / "htpasswd.new"
    write(replacement, f"eve:{APR1_BOB_SECRET}\n", 1)  # same size and mtime, new inode
    replacement.replace(path)
    clock.now += 1.5
    assert await auth.verify("eve", "secret")
    assert not await auth.verify("bob", "secret")


async def test_invalid_htpasswd_keeps_old_entries(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"carol:{SHA_CAROL_SECRET}\n", 1)
    clock = FakeClock()
    with capture_logs() as logs:
        auth = make([], path, clock=clock)
        assert await auth.verify("carol", "secret")

        write(path, f"carol:{SHA_CAROL_SECRET}\neve:hunter2\n", 2)
        clock.now += 1.5
        assert await auth.verify("carol", "secret")
        assert not await auth.verify("eve", "hunter2")
        clock.now += 1.5
        assert await auth.verify("carol", "secret")  # the same bad file is not re-reported

        write(path, f"carol:{SHA_CAROL_SECRET}\neve:{MD5_SECRET}\n", 3)
        clock.now += 1.5
        assert await auth.verify("eve", "secret")
    events = [entry["event"] for entry in logs]
    assert events == ["htpasswd_reload_failed", "htpasswd_reloaded"]
    warning = logs[0]
    assert warning["log_level"] == "warning"
    assert warning["kept_users"] == 1
    assert f"{path}:2:" in warning["error"]
    rendered = repr(logs)
    assert "hunter2" not in rendered
    assert SHA_CAROL_SECRET not in rendered


async def test_deleted_htpasswd_keeps_old_entries(
    tmp_path: Path, make: Callable[..., CountingAuthenticator]
) -> None:
    path = tmp_path / "htpasswd"
    write(path, f"carol:{SHA_CAROL_SECRET}\n", 1)
    clock = FakeClock()
    with capture_logs() as logs:
        auth = make([], path, clock=clock)
        path.unlink()
        clock.now += 1.5
        assert await auth.verify("carol", "secret")
        clock.now += 1.5
        assert await auth.verify("carol", "secret")
        write(path, f"dave:{MD5_SECRET}\n", 2)
        clock.now += 1.5
        assert await auth.verify("dave", "secret")
        assert not await auth.verify("carol", "secret")
    assert [entry["event"] for entry in logs] == ["htpasswd_reload_failed", "htpasswd_reloaded"]
    assert "cannot read" in logs[0]["error"]
