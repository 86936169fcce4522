"""Listening: bind the configured listeners, build their TLS contexts, size the descriptor budget.

Everything here runs at start and on reload, never per connection. The accept loop itself is the
server's (server.py), because pausing and resuming it belongs with the connection counts.
"""

from __future__ import annotations

import errno
import resource
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectproxy.config.model import Listener
from connectproxy.matching.addresses import SocketAddress

FDS_PER_CONNECTION = 2
FDS_RESERVED = 64  # listeners, logs, pipes in flight, the resolver's threads
LISTEN_BACKLOG = 4096  # connections the kernel may complete before we accept them
# Linux copies TCP_NODELAY from a listener to the sockets it accepts (tests check it).
NODELAY_INHERITED = sys.platform.startswith("linux")


@dataclass(eq=False)
class Listening:
    """A bound listener and what its connections need: the TLS context of an HTTPS listener."""

    listener: Listener
    sock: socket.socket
    tls_context: ssl.SSLContext | None = None
    paused: bool = False
    family: int = field(init=False)  # the socket's address family, read once for `accept_socket`

    def __post_init__(self) -> None:
        self.family = int(self.sock.family)


def listener_tls_context(listener: Listener) -> ssl.SSLContext | None:
    """Built at start and on every reload, so a renewed certificate is picked up by SIGHUP."""
    tls = listener.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def raise_fd_limit() -> int:
    """Raise the descriptor soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_capacity(fd_limit: int) -> int:
    return max(1, (fd_limit - FDS_RESERVED) // FDS_PER_CONNECTION)


def bind_listener(
    listener: Listener,
    all_listeners: tuple[Listener, ...],
    reuse_port: bool,
    new_socket: Callable[[int, int], socket.socket] = socket.socket,
) -> socket.socket:
    """A listening socket for `listener`. `new_socket` makes the socket: a test passes one that
    fails for IPv6 as a host without IPv6 does (see `open_listener`)."""
    # Plain tuples, as in dial.lookup: compiled, the declared enum types would be checked.
    infos: list[tuple[Any, ...]] = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family: int = infos[0][0]
    sockaddr: SocketAddress = infos[0][4]
    sock = new_socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:P" is dual-stack unless an IPv4 listener wants the same port.
            sock.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_V6ONLY,
                int(_ipv4_same_port(listener, all_listeners)),
            )
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt here
        # instead of one per connection (elsewhere `_accepted` sets it on each).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _ipv4_same_port(listener: Listener, all_listeners: tuple[Listener, ...]) -> bool:
    return any(o.port == listener.port and ":" not in o.host for o in all_listeners)


# What creating or binding an IPv6 socket fails with on a host without IPv6: a kernel without it
# (built so, or booted with ipv6.disable=1) has no such address family; with IPv6 switched off
# on every interface, an IPv6 address cannot be assigned.
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL)


def open_listener(
    listener: Listener,
    all_listeners: tuple[Listener, ...],
    reuse_port: bool,
    new_socket: Callable[[int, int], socket.socket] = socket.socket,
) -> tuple[socket.socket, OSError | None]:
    """`bind_listener`, except that a dual-stack "[::]:P" listener (every IPv4 and IPv6 address,
    the embedded default) on a host without IPv6 listens on "0.0.0.0:P" instead, as Squid does.
    The second item is then the IPv6 failure, for the one warning the caller logs: the socket
    stays open across reloads, so the fallback happens once per process."""
    try:
        return bind_listener(listener, all_listeners, reuse_port, new_socket), None
    except OSError as exc:
        dual_stack = listener.host == "::" and not _ipv4_same_port(listener, all_listeners)
        if not dual_stack or exc.errno not in NO_IPV6:
            raise
        ipv4 = Listener("0.0.0.0", listener.port, listener.proxy_protocol, listener.tls)
        return bind_listener(ipv4, all_listeners, reuse_port, new_socket), exc


def accept_socket(listening: Listening) -> tuple[socket.socket, SocketAddress]:
    """`listening.sock.accept()` without its interpreted wrapper, which builds enum members for
    the listener's family and type on every call. Measured with `bench/run.py --scenario
    instructions`: the wrapper costs 13,000 of a tunnel's 248,000 user-space instructions (5%),
    so the C method it calls (`_accept`, CPython's socket.py) is used directly. The peer address
    is a pair for IPv4 and a 4-tuple for IPv6 (SocketAddress): tests/integration/server/
    test_dual_stack.py runs every family through here on both builds."""
    fd, peer = listening.sock._accept()  # type: ignore[attr-defined]
    return socket.socket(listening.family, socket.SOCK_STREAM, 0, fd), peer
