"""Reaching a destination: resolve once, then connect to exactly the checked addresses.

Resolution and connection are separate steps on purpose. The policy filters the resolved list
(`policy.usable_addresses`), and `open_tcp` takes that list, never a name, so no second lookup
(which DNS rebinding could answer differently) happens between the check and the connect.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from typing import Any

from connectproxy.config.model import Config
from connectproxy.matching.addresses import address_text, normalise, parse_address
from connectproxy.matching.netset import IPAddress
from connectproxy.net.sockio import wait_writable
from connectproxy.outcome import Outcome, Refusal
from connectproxy.wire.http import Target

# RFC 8305 suggests 250 ms between connection attempts.
HAPPY_EYEBALLS_DELAY = 0.25


class DialError(Refusal):
    """A destination could not be reached; `status` and `outcome` say how to answer."""

    status: int

    def __init__(
        self, status: int, outcome: Outcome, reason: str, upstream: str | None = None
    ) -> None:
        super().__init__(status, outcome, reason)
        self.args = (status, outcome, reason, upstream)
        self.status = status
        self.upstream = upstream  # the upstream proxy that refused, for the access log


async def resolve(target: Target, config: Config) -> list[IPAddress]:
    """`destinations.hosts`, then DNS through the loop's resolver (which runs off the loop)."""
    if target.ip is not None:
        return [normalise(target.ip)]
    static = config.destinations.lookup_host(target.host)
    if static is not None:
        return [normalise(a) for a in static]
    return await lookup(target.host, target.port)


async def lookup(host: str, port: int) -> list[IPAddress]:
    """DNS through the loop's resolver (which runs off the loop), deduplicated, in order."""
    loop = asyncio.get_running_loop()
    # Plain tuples: typeshed declares (AddressFamily, SocketKind, ...), and compiled (setup.py)
    # that is checked for every entry, but the socket module hands over a bare int for a family
    # or kind its enums lack. Only the address, sockaddr[0], is read, whatever the family.
    infos: list[tuple[Any, ...]]
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise DialError(502, "resolve_failed", f"cannot resolve {host}: {exc}") from None
    addrs = list(dict.fromkeys(parse_address(str(info[4][0])) for info in infos))
    if not addrs:
        raise DialError(502, "resolve_failed", f"no addresses for {host}")
    return addrs


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux and the BSDs; elsewhere setblocking()


async def _connect_one(addr: IPAddress, port: int) -> socket.socket:
    """A non-blocking connect driven by hand: the loop's `sock_connect` first re-resolves the
    address in a coroutine of its own, which costs a third of a loopback connect."""
    family = socket.AF_INET if isinstance(addr, ipaddress.IPv4Address) else socket.AF_INET6
    # Non-blocking from birth: one system call fewer than socket() and then setblocking().
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((address_text(addr), port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            if _connected(sock):
                err = 0
            else:
                await wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


def _connected(sock: socket.socket) -> bool:
    """On loopback and fast links the handshake often completes within connect() itself even
    though it reports EINPROGRESS; then there is nothing to wait for."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _connect_error(addrs: list[IPAddress], port: int, errors: list[BaseException]) -> DialError:
    last = errors[-1] if errors else None
    # The loop's own strerror is a generic "Connect call failed"; the errno says which failure.
    detail = os.strerror(last.errno) if isinstance(last, OSError) and last.errno else str(last)
    where = str(addrs[0]) if len(addrs) == 1 else f"{len(addrs)} addresses"
    return DialError(502, "connect_failed", f"cannot connect to {where} port {port}: {detail}")


async def open_tcp(addrs: list[IPAddress], port: int) -> tuple[socket.socket, IPAddress]:
    """Connect to the first address that answers, starting the next attempt every 250 ms while
    earlier ones are still pending (Happy Eyeballs); return the socket and the address it
    reached. The caller bounds the whole with the connect timeout; cancelling closes every
    attempt's socket."""
    if len(addrs) == 1:
        try:
            return await _connect_one(addrs[0], port), addrs[0]
        except OSError as exc:
            raise _connect_error(addrs, port, [exc]) from None

    errors: list[BaseException] = []
    attempts: dict[asyncio.Task[socket.socket], IPAddress] = {}
    pending: set[asyncio.Task[socket.socket]] = set()
    try:
        for addr in addrs:
            attempt = asyncio.ensure_future(_connect_one(addr, port))
            attempts[attempt] = addr
            pending.add(attempt)
            done, pending = await asyncio.wait(
                pending, timeout=HAPPY_EYEBALLS_DELAY, return_when=asyncio.FIRST_COMPLETED
            )
            if (winner := _pick(done, errors, attempts)) is not None:
                return winner
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if (winner := _pick(done, errors, attempts)) is not None:
                return winner
        raise _connect_error(addrs, port, errors)
    finally:
        # Cancelled, not awaited: no await in a `finally` (or `except`), as in sockio.py.
        for task in pending:
            task.cancel()
            task.add_done_callback(_close_late)


def _close_late(attempt: asyncio.Task[socket.socket]) -> None:
    """An attempt that connected just before its cancel reached it: nobody wants its socket.
    (A cancelled attempt closes its own socket; `exception()` marks a failure as seen.)"""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


def _pick(
    done: set[asyncio.Task[socket.socket]],
    errors: list[BaseException],
    attempts: dict[asyncio.Task[socket.socket], IPAddress],
) -> tuple[socket.socket, IPAddress] | None:
    """The first connected socket of this round and its address; any other that finished in
    the same round is closed, and failures go to `errors`."""
    winner: tuple[socket.socket, IPAddress] | None = None
    for task in done:
        exc = task.exception()
        if exc is not None:
            errors.append(exc)
        elif winner is None:
            winner = task.result(), attempts[task]
        else:
            task.result().close()
    return winner
