"""Listening: bind the configured listeners, build their TLS contexts, size the descriptor budget.

Everything here runs at start and on reload, never per connection. The accept loop itself is the
server's (server.py), because pausing and resuming it belongs with the connection counts.
"""

from __future__ import annotations

import resource
import socket
import ssl
import sys
from dataclasses import dataclass

from connectproxy.config.model import Listener

FDS_PER_CONNECTION = 2
FDS_RESERVED = 64  # listeners, logs, pipes in flight, the resolver's threads
# Linux copies TCP_NODELAY from a listener to the sockets it accepts (tests check it).
NODELAY_INHERITED = sys.platform.startswith("linux")


@dataclass(eq=False)
class Listening:
    """A bound listener and what its connections need: the TLS context of an HTTPS listener."""

    listener: Listener
    sock: socket.socket
    tls_context: ssl.SSLContext | None = None
    paused: bool = False


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
    listener: Listener, all_listeners: tuple[Listener, ...], reuse_port: bool
) -> socket.socket:
    infos = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:P" is dual-stack unless an IPv4 listener wants the same port.
            v4_same_port = any(o.port == listener.port and ":" not in o.host for o in all_listeners)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v4_same_port))
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt here
        # instead of one per connection (elsewhere `_accepted` sets it on each).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
