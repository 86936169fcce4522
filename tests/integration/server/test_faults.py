"""Faults in the middle of a tunnel: the origin resets, the client resets, the upstream proxy is
killed, the origin stops reading, a peer half-closes and never finishes.

Every case checks the same four promises on a real proxy process:
- both of the tunnel's sockets are closed: the proxy's open sockets (read from /proc/PID/fd) go
  back to what they were before the tunnel, and the peers see their connections end;
- metrics: the tunnel counted once as established, the tunnel gauge back down, the byte counters
  equal to what the access log says was copied;
- the access log has exactly one record for the connection, carrying why it ended;
- a bystander tunnel opened before the fault still echoes afterwards.

Each faulty origin is a plain listening socket the test accepts from itself, so the test decides
exactly when the origin resets, stops reading or half-closes.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    OriginServer,
    ProxyProcess,
    Streamer,
    connect_raw,
    echo_exchange,
    open_tunnel_from_source,
    rss_kib,
    scrape,
    socket_count,
    status_of,
    value,
)

SENSOR = "sensor.azure-devices.net"
FAULTY = "faulty.azure-devices.net"
UPDATES = "download.microsoft.com"  # reached through the upstream in the chaining case
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def ends(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer has closed (EOF or reset); reads and drops anything still coming."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def config_for(*ports: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "allow": {"ports": list(ports), "domains": [".azure-devices.net", UPDATES]},
        "clients": [
            {"name": "bystander", "networks": ["127.0.0.2/32"]},
            {"name": "local", "networks": ["127.0.0.0/8"]},
        ],
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1", FAULTY: "127.0.0.1", UPDATES: "127.0.0.1"},
            "deny_networks": LOOPBACK_OK_DENY,
        },
        # A short grace: a tunnel the proxy failed to reclaim must not hold up the teardown.
        "timeouts": {"idle": 2, "connect": 2, "shutdown_grace": 1},
        "log": {"level": "info"},
    }
    config.update(overrides)
    return config


@dataclass
class Stage:
    """A proxy with a bystander tunnel kept busy (so the idle timeout leaves it alone) by a
    client of its own name, and a listener for the faulty origin."""

    proxy: ProxyProcess
    listener: socket.socket
    bystander: Streamer
    sockets_before: int
    established_before: float

    @property
    def pid(self) -> int:
        assert self.proxy.proc is not None
        return self.proxy.proc.pid

    def open(self) -> tuple[socket.socket, socket.socket]:
        """A tunnel to the faulty origin: the client socket and the origin's accepted socket."""
        port = self.listener.getsockname()[1]
        head = f"CONNECT {FAULTY}:{port} HTTP/1.1\r\n\r\n".encode()
        client, answer = connect_raw(self.proxy.port, head, 5)
        assert status_of(answer) == 200, answer
        conn, _ = self.listener.accept()
        return client, conn

    def assert_reclaimed(self, client_port: int, tunnels: int = 1) -> dict[str, Any]:
        """The four promises of the module docstring; returns the connection's access record."""
        wait_until(
            lambda: socket_count(self.pid) <= self.sockets_before,
            10,
            "the proxy to close the tunnel's sockets",
        )
        samples = scrape(self.proxy)
        assert value(samples, "connectproxy_tunnels_active", client="local") == 0
        assert value(samples, "connectproxy_tunnels_active", client="bystander") == 1
        established = value(samples, "connectproxy_requests_total", outcome="established")
        assert established == self.established_before + tunnels
        records = [r for r in self.proxy.access_records(expect=tunnels, timeout=5)]
        mine = [r for r in records if r["client_port"] == client_port]
        assert len(mine) == 1, records
        record = mine[0]
        assert record["outcome"] == "established" and record["status"] == 200
        for direction in ("client_to_server", "server_to_client"):
            counted = value(
                samples, "connectproxy_tunnel_bytes_total", client="local", direction=direction
            )
            logged = sum(r[f"bytes_{direction}"] for r in records)
            assert counted == logged, (direction, counted, logged)
        self.bystander.wait_rounds(3)
        assert "Traceback" not in self.proxy.stderr()
        return record


@pytest.fixture()
def make_stage(
    make_proxy: ProxyFactory, origin: OriginServer
) -> Iterator[Callable[[float], Stage]]:
    """Stages with a given idle timeout: long where a fault must be noticed by itself (a reset
    must not wait for the idle timeout), short where only the idle timeout can help."""
    listeners: list[socket.socket] = []
    streamers: list[Streamer] = []

    def factory(idle: float) -> Stage:
        listener = socket.socket()
        listeners.append(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(5)
        config = config_for(
            origin.port, listener.getsockname()[1], timeouts={"idle": idle, "shutdown_grace": 1}
        )
        proxy = make_proxy(config)
        bystander = open_tunnel_from_source(
            proxy.port, f"{SENSOR}:{origin.port}", source="127.0.0.2"
        )
        echo_exchange(bystander, b"Ehello")
        streamer = Streamer(bystander)
        streamers.append(streamer)
        streamer.wait_rounds(3)
        assert proxy.proc is not None
        samples = scrape(proxy)
        return Stage(
            proxy,
            listener,
            streamer,
            socket_count(proxy.proc.pid),
            value(samples, "connectproxy_requests_total", outcome="established"),
        )

    yield factory
    for streamer in streamers:
        streamer.stop()
        streamer.sock.close()
    for listener in listeners:
        listener.close()


@pytest.fixture()
def stage(make_stage: Callable[[float], Stage]) -> Stage:
    """Idle timeout 60 s: anything reclaimed within the test's few seconds was noticed as such."""
    return make_stage(60)


@pytest.fixture()
def idle_stage(make_stage: Callable[[float], Stage]) -> Stage:
    return make_stage(2)


def test_origin_reset_right_after_sending(stage: Stage) -> None:
    """The origin sends its last bytes and resets at once (a server that aborts after writing).
    The proxy must deliver the bytes, notice the reset and close the client side promptly. The
    reset then races the data in the proxy's event loop, so the case is repeated a few times."""
    for attempt in range(1, 9):
        client, conn = stage.open()
        client.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += conn.recv(1000)
        conn.sendall(b"y" * 500)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        conn.close()
        assert ends(client, timeout=2), f"attempt {attempt}: the reset never reached the client"
        record = stage.assert_reclaimed(client.getsockname()[1], tunnels=attempt)
        assert record["bytes_server_to_client"] == 500
        assert record["error"] is not None and "reset" in record["error"], record
        client.close()


def test_origin_reset_while_idle(stage: Stage) -> None:
    client, conn = stage.open()
    client.sendall(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += conn.recv(1000)
    time.sleep(0.3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    conn.close()
    assert ends(client, timeout=3), "the origin's reset never reached the client"
    record = stage.assert_reclaimed(client.getsockname()[1])
    assert record["error"] is not None and "reset" in record["error"], record
    client.close()


def test_client_reset_mid_tunnel(stage: Stage) -> None:
    client, conn = stage.open()
    client.sendall(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += conn.recv(1000)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    client_port = client.getsockname()[1]
    client.close()
    assert ends(conn, timeout=3), "the proxy did not close the origin's side after the reset"
    record = stage.assert_reclaimed(client_port)
    assert record["bytes_client_to_server"] == 1000
    assert record["error"] is not None and "reset" in record["error"], record
    conn.close()


def test_client_reset_while_the_origin_streams(stage: Stage) -> None:
    """The origin is mid-way through a large download when the client resets: the proxy's write
    to the client fails and both sides close."""
    client, conn = stage.open()
    conn.sendall(b"z" * 1000)
    assert client.recv(1)  # the download has started
    conn.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    client_port = client.getsockname()[1]
    block = b"z" * 65536
    deadline = time.monotonic() + 10
    closed = False
    client_closed = False
    while time.monotonic() < deadline and not closed:
        try:
            conn.send(block)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not client_closed:
            client.close()
            client_closed = True
        try:
            closed = closed or conn.recv(1) == b""
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert closed, "the origin kept streaming into a tunnel whose client was gone"
    stage.assert_reclaimed(client_port)
    conn.close()


def test_origin_that_never_reads_keeps_memory_bounded(idle_stage: Stage) -> None:
    """The client uploads as fast as it can to an origin that accepted and never reads: the
    proxy stops reading from the client instead of buffering, then the idle timeout (2 s here)
    reclaims the stuck tunnel once the client gives up."""
    stage = idle_stage
    client, conn = stage.open()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.setblocking(False)
    before = rss_kib(stage.pid)
    sent = 0
    block = b"u" * 65536
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            sent += client.send(block)
        except BlockingIOError:
            time.sleep(0.005)
    grown = rss_kib(stage.pid) - before
    assert grown < 8 * 1024, f"proxy RSS grew {grown} KiB for a stalled upload"
    # What was accepted is what fits in the socket buffers and one chunk, not the 2 s of sending.
    assert sent < 32 * 1024 * 1024, sent
    client_port = client.getsockname()[1]
    client.close()  # the client gives up; the origin still never reads
    began = time.monotonic()
    assert ends(conn, timeout=10), "the stalled tunnel was never reclaimed"
    assert time.monotonic() - began < 5
    record = stage.assert_reclaimed(client_port)
    assert 0 < record["bytes_client_to_server"] <= sent
    conn.close()


def test_client_half_close_then_origin_never_finishes(idle_stage: Stage) -> None:
    """The client says it is done (FIN); the origin neither answers nor closes. The idle timeout
    (2 s) closes both sides."""
    stage = idle_stage
    client, conn = stage.open()
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    got = b""
    while not got.endswith(b"request"):
        got += conn.recv(100)
    assert conn.recv(100) == b""  # the client's FIN was passed on
    began = time.monotonic()
    assert ends(client, timeout=10), "the half-closed tunnel was never reclaimed"
    assert 1.5 < time.monotonic() - began < 5
    assert ends(conn, timeout=2)
    record = stage.assert_reclaimed(client.getsockname()[1])
    assert record["error"] == "idle timeout"
    client.close()
    conn.close()


def test_origin_half_close_then_client_never_finishes(idle_stage: Stage) -> None:
    stage = idle_stage
    client, conn = stage.open()
    conn.sendall(b"bye")
    conn.shutdown(socket.SHUT_WR)
    got = b""
    while not got.endswith(b"bye"):
        got += client.recv(100)
    assert client.recv(100) == b""  # the origin's FIN was passed on
    began = time.monotonic()
    assert ends(conn, timeout=10), "the half-closed tunnel was never reclaimed"
    assert 1.5 < time.monotonic() - began < 5
    record = stage.assert_reclaimed(client.getsockname()[1])
    assert record["error"] == "idle timeout"
    client.close()
    conn.close()


def test_upstream_proxy_killed_with_tunnels_open(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    """Tunnels through an upstream (a second connectproxy) whose process is killed: each ends
    for its client and is reclaimed; a direct tunnel on the same proxy is not disturbed; the next
    request through the dead upstream gets a 502 and counts an upstream failure."""
    upstream = make_proxy(config_for(origin.port, timeouts={"idle": 60, "shutdown_grace": 1}))
    assert upstream.proc is not None
    proxy = make_proxy(
        config_for(
            origin.port,
            upstream={
                "proxies": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                "direct_domains": [SENSOR],
            },
            timeouts={"idle": 60, "shutdown_grace": 1},
        )
    )
    assert proxy.proc is not None
    bystander, head = connect_raw(
        proxy.port, f"CONNECT {SENSOR}:{origin.port} HTTP/1.1\r\n\r\n".encode(), 5
    )
    assert status_of(head) == 200
    echo_exchange(bystander, b"Edirect")
    sockets_before = socket_count(proxy.proc.pid)

    chained = []
    for _ in range(3):
        sock, head = connect_raw(
            proxy.port, f"CONNECT {UPDATES}:{origin.port} HTTP/1.1\r\n\r\n".encode(), 5
        )
        assert status_of(head) == 200, head
        echo_exchange(sock, b"Echained")
        chained.append(sock)
    os.kill(upstream.proc.pid, signal.SIGKILL)
    upstream.proc.wait(5)
    for sock in chained:
        assert ends(sock), "a tunnel through the killed upstream stayed open"
    ports = [sock.getsockname()[1] for sock in chained]
    for sock in chained:
        sock.close()

    wait_until(lambda: socket_count(proxy.proc.pid) <= sockets_before, 10, "sockets to close")  # type: ignore[union-attr]
    records = proxy.access_records(expect=3)
    for port in ports:
        [record] = [r for r in records if r["client_port"] == port]
        assert record["outcome"] == "established"
        assert record["upstream"] == f"http://127.0.0.1:{upstream.port}"
    echo_exchange(bystander, b"still here")

    status, _ = _ask(proxy.port, f"{UPDATES}:{origin.port}")
    assert status == 502
    samples = scrape(proxy)
    name = f"http://127.0.0.1:{upstream.port}"
    assert value(samples, "connectproxy_upstream_failures_total", upstream=name) == 1
    assert value(samples, "connectproxy_tunnels_active", client="local") == 1
    assert value(samples, "connectproxy_requests_total", outcome="established") == 4
    echo_exchange(bystander, b"and still")
    bystander.close()


def _ask(port: int, target: str) -> tuple[int, bytes]:
    sock, data = connect_raw(port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode(), 10)
    sock.close()
    return status_of(data), data
