"""Listening sockets: what accepted connections get from them."""

from __future__ import annotations

import socket

from connectproxy.config import Listener
from connectproxy.server import NODELAY_INHERITED, bind_listener


def test_accepted_connections_get_tcp_nodelay_from_the_listener() -> None:
    """The server relies on this instead of a setsockopt per accepted connection: small
    tunnelled messages (TLS records, telemetry) must not wait for Nagle's algorithm."""
    assert NODELAY_INHERITED
    listener = Listener("127.0.0.1", 0)
    sock = bind_listener(listener, (listener,), reuse_port=False)
    try:
        with socket.create_connection(sock.getsockname()[:2]):
            sock.setblocking(True)
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
