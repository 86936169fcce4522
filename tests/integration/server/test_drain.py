"""Draining and the listen queue (SPEC section 7, signals; section 10, scale-out).

The kernel completes a client's handshake before the proxy accepts it, so when draining starts
there may be connected clients nobody has accepted yet. Behind a load balancer each is a tunnel
the balancer has already handed over and cannot retry: closing the listener would reset it. The
server accepts and serves them before it closes the listener.

This runs the real server in the test's own event loop, so the clients can be queued while the
loop is not running: that makes "queued when draining starts" certain rather than likely. The
process-level check is `test_operations.py::test_sigterm_serves_clients_connected_before_it`.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from connectproxy.configfile.load import parse_config
from connectproxy.observe.logs import AccessLog
from connectproxy.observe.metrics import Metrics
from connectproxy.process.app import build_loaded
from connectproxy.server.server import Server
from tests.support import SENSOR, OriginServer, config_for, free_port, read_head, status_of

QUEUED = 5


def exchange(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the CONNECT already sent on `sock`, and what the tunnel echoes back."""
    with sock:
        status = status_of(read_head(sock))
        echoed = sock.recv(16) if status == 200 else b""
        return status, echoed


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_clients_queued_when_draining_starts_are_served(
    origin: OriginServer, tmp_path: Path, host: str
) -> None:
    port = free_port(host)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    settings = config_for(origin.port, listen=[address], metrics={"listen": None})
    config = parse_config(yaml.safe_dump(settings), "drain.yaml", tmp_path)
    server = Server(build_loaded(config), Metrics(CollectorRegistry()), AccessLog(config.log))
    server.start()
    clients = []
    for _ in range(QUEUED):  # the loop does not run here, so nothing accepts them yet
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(f"CONNECT {SENSOR}:{origin.port} HTTP/1.1\r\n\r\nE".encode())
        clients.append(sock)
    assert server.connections == 0
    answers = asyncio.gather(*(asyncio.to_thread(exchange, sock) for sock in clients))
    # drain() closes the listeners before its first await, before the loop could accept.
    await server.drain(5)
    assert await answers == [(200, b"E")] * QUEUED
    assert not server.listening
    # Once drained, the port refuses: a balancer retries a refused connection elsewhere.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as late:
        assert late.connect_ex((host, port)) != 0
