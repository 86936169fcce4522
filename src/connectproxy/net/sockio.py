"""Awaitable reads, writes and TLS handshakes on non-blocking sockets, plain or TLS.

The event loop's `sock_recv`/`sock_sendall` refuse `ssl.SSLSocket`, and the handshake phase of a
TLS listener or an `https://` upstream needs exactly those on one. These helpers wait for readiness
with `add_reader`/`add_writer` and retry, which is also all the tunnel needs later: the socket stays
a plain object the tunnel can drive with its own callbacks.

No coroutine here waits inside an `except` block: each handler only notes what to wait for, and
the wait comes after it. Compiled by mypyc, a coroutine suspended in a handler leaves its exception
as the one "being handled" for everything else the loop runs until it resumes. Under load that
made every exception raised anywhere in the proxy (even the TypeError that `bytes in bytes` makes
and clears internally) chain itself onto it and walk a chain over a hundred long first.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any


async def _wait(sock: socket.socket, writable: bool) -> None:
    """Until `sock` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def recv(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes; b"" at end of stream. Tries the read first: on a fresh connection the
    request is usually already there, and waiting for readiness would cost a loop iteration.

    From a TLS socket it may return more than `size`: the rest of the decrypted record comes
    too (at most 16 KiB). Bytes left inside the TLS layer are invisible to readiness events, so
    whoever drives the socket by readiness next (the tunnel, after the request head) would never
    be told they are there."""
    while True:
        try:
            data = sock.recv(size)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            writable = False
        except ssl.SSLWantWriteError:
            writable = True
        except ssl.SSLZeroReturnError:
            return b""
        else:
            if isinstance(sock, ssl.SSLSocket) and (left := sock.pending()):
                data += sock.recv(left)
            return data
        await _wait(sock, writable)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            writable = True
        except ssl.SSLWantReadError:
            writable = False
        else:
            view = view[sent:]
            continue
        await _wait(sock, writable)


async def handshake(sock: ssl.SSLSocket) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            writable = False
        except ssl.SSLWantWriteError:
            writable = True
        await _wait(sock, writable)


def peer_names(sock: ssl.SSLSocket) -> tuple[str, ...]:
    """Subject CNs and DNS SANs of a verified client certificate, for `clients[].tls_names`."""
    cert: dict[str, Any] | None = sock.getpeercert()
    if not cert:
        return ()
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        names.extend(value for key, value in rdn if key == "commonName")
    names.extend(value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    return tuple(dict.fromkeys(names))


async def wait_readable(sock: socket.socket) -> None:
    await _wait(sock, writable=False)


async def wait_writable(sock: socket.socket) -> None:
    await _wait(sock, writable=True)


def peer_address(sock: socket.socket) -> str | None:
    """ "host:port" or "[v6]:port" of the connected peer, for logs; None once it is gone."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
