"""Listening sockets: what accepted connections get from them, and how a queue of them is taken."""

from __future__ import annotations

import os
import signal
import socket

from connectproxy.config.model import Listener
from connectproxy.server.listening import NODELAY_INHERITED, bind_listener
from tests.conftest import ProxyFactory
from tests.support import (
    SENSOR,
    OriginServer,
    config_for,
    echo_exchange,
    read_head,
    status_of,
)


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


def test_a_queue_of_waiting_connections_is_served_in_full(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    """The server accepts one connection per readiness event at once and the rest of the queue
    a step later (server.py `_on_acceptable`). With the proxy stopped, 200 clients connect and
    send their CONNECT, so all of them wait in the listen queue together, more than one accept
    batch; once the proxy runs again every one must be answered and its tunnel must work."""
    proxy = make_proxy(config_for(origin.port))
    assert proxy.proc is not None
    target = f"{SENSOR}:{origin.port}"
    clients: list[socket.socket] = []
    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            clients.append(sock)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    try:
        for i, sock in enumerate(clients):
            assert status_of(read_head(sock)) == 200
            echo_exchange(sock, f"E burst {i}".encode())  # E: the origin echoes
    finally:
        for sock in clients:
            sock.close()
    records = proxy.access_records(expect=200)
    assert [r["outcome"] for r in records] == ["established"] * 200
