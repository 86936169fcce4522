"""SPEC section 7 with real processes and real signals: SIGHUP reload under load, SIGTERM/SIGINT
drain, access-log rotation and the Squid log format, systemd notifications on a real notify
socket, and `--workers N` (summed metrics, reload of every worker, replacement of a dead one).

Every process is started by a fixture and signalled by its own PID.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
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
    finish,
    free_port,
    http_get,
    read_head,
    request,
    scrape,
    status_of,
    value,
    wait_for_metric,
    wait_until,
)

SENSOR = "sensor.azure-devices.net"
UPDATES = "download.microsoft.com"
RELOADS = "connectproxy_config_reloads_total"


def config_for(port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "allow": {"ports": [443, port], "domains": [".azure-devices.net", UPDATES]},
        "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1", UPDATES: "127.0.0.1"},
            "deny_networks": LOOPBACK_OK_DENY,
        },
    }
    config.update(overrides)
    return config


def reconfigure(proxy: ProxyProcess, change: Callable[[dict[str, Any]], None]) -> None:
    """Write a changed copy of the running config (listen/metrics/log as the proxy has them)."""
    config = copy.deepcopy(proxy.config)
    change(config)
    proxy.write_config(config)


def open_tunnel(port: int, target: str) -> socket.socket:
    """A tunnel to the echo origin, already past its first echoed byte."""
    sock, head = connect_raw(port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode() + b"E", 10)
    assert status_of(head) == 200, head
    assert sock.recv(1) == b"E"
    return sock


def refused_or_503(port: int) -> bool:
    """A new client is turned away: the connect fails, or it gets a 503 (or a bare close)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return True
    with sock:
        sock.sendall(f"CONNECT {SENSOR}:443 HTTP/1.1\r\n\r\n".encode())
        try:
            answer = sock.recv(100)
        except OSError:
            return True
    return answer == b"" or status_of(answer) == 503


# ---- SIGHUP ------------------------------------------------------------------------------------


def test_sighup_reload_under_load(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    with OriginServer() as second:
        proxy = make_proxy(config_for(origin.port))
        assert request(proxy.port, f"{UPDATES}:{origin.port}")[0] == 200
        assert request(proxy.port, f"{SENSOR}:{second.port}")[0] == 403
        streamer = Streamer(open_tunnel(proxy.port, f"{SENSOR}:{origin.port}"))
        streamer.wait_rounds(3)

        def new_policy(config: dict[str, Any]) -> None:
            config["allow"] = {
                "ports": [443, origin.port, second.port],
                "domains": [".azure-devices.net"],
            }

        reconfigure(proxy, new_policy)
        proxy.signal(signal.SIGHUP)
        wait_for_metric(proxy, RELOADS, 1, result="success")
        assert request(proxy.port, f"{UPDATES}:{origin.port}")[0] == 403  # domain removed
        assert request(proxy.port, f"{SENSOR}:{second.port}")[0] == 200  # port added
        streamer.wait_rounds(3)  # the open tunnel never noticed

        proxy.config_path.write_text("allow: [\n")  # broken YAML
        proxy.signal(signal.SIGHUP)
        samples = wait_for_metric(proxy, RELOADS, 1, result="failure")
        assert value(samples, RELOADS, result="failure") == 1
        assert value(samples, RELOADS, result="success") == 1
        assert proxy.proc is not None and proxy.proc.poll() is None
        assert request(proxy.port, f"{UPDATES}:{origin.port}")[0] == 403  # still the new policy
        assert request(proxy.port, f"{SENSOR}:{second.port}")[0] == 200
        streamer.wait_rounds(3)
        streamer.stop()
        finish(streamer.sock)
        assert "config reload failed" in proxy.stderr()


def test_reload_adds_and_removes_listeners(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port))
    tunnel = open_tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    new_port = free_port()
    reconfigure(proxy, lambda c: c.update(listen=[f"127.0.0.1:{new_port}"]))
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    assert request(new_port, f"{SENSOR}:{origin.port}")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    echo_exchange(tunnel, b"accepted by the removed listener, still flowing")
    finish(tunnel)


# ---- SIGTERM / SIGINT --------------------------------------------------------------------------


def test_sigterm_drains_open_tunnels_until_the_grace_deadline(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port, timeouts={"shutdown_grace": 3}))
    tunnel = open_tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    proxy.signal(signal.SIGTERM)
    began = time.monotonic()
    wait_until(lambda: http_get(proxy.metrics_port, "/readyz")[0] == 503, 1.0, "readyz 503")
    assert value(scrape(proxy), "connectproxy_ready") == 0  # what the not-ready alert reads
    assert refused_or_503(proxy.port)
    for _ in range(3):  # the tunnel keeps working through the grace period
        echo_exchange(tunnel, b"draining")
        time.sleep(0.4)
    assert proxy.proc is not None and proxy.proc.poll() is None
    tunnel.settimeout(6)
    with contextlib.suppress(ConnectionResetError):
        assert tunnel.recv(10) == b""  # closed by the proxy at the deadline
    closed_after = time.monotonic() - began
    assert 2.5 < closed_after < 4.5, closed_after
    assert proxy.proc.wait(5) == 0
    tunnel.close()
    [tunnel_record] = proxy.access_records(expect=1)
    assert tunnel_record["outcome"] == "established"
    assert tunnel_record["error"] == "shutdown"


def test_sigterm_serves_clients_connected_before_it(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    """Clients the kernel connected while the proxy was stopped, and whose CONNECT is waiting,
    are served after SIGTERM rather than reset (tests/integration/server/test_drain.py makes
    the order certain; this is the same promise through a real process and a real signal)."""
    proxy = make_proxy(config_for(origin.port, timeouts={"shutdown_grace": 5}))
    assert proxy.proc is not None
    proxy.signal(signal.SIGSTOP)
    clients = []
    try:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(f"CONNECT {SENSOR}:{origin.port} HTTP/1.1\r\n\r\nE".encode())
            clients.append(sock)
        proxy.signal(signal.SIGTERM)
    finally:
        proxy.signal(signal.SIGCONT)
    for sock in clients:
        with sock:
            assert status_of(read_head(sock)) == 200
            assert sock.recv(1) == b"E"
    assert proxy.proc.wait(5) == 0
    records = proxy.access_records(expect=5)
    assert [r["outcome"] for r in records] == ["established"] * 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_without_tunnels_is_prompt_and_clean(
    make_proxy: ProxyFactory, origin: OriginServer, sig: signal.Signals
) -> None:
    proxy = make_proxy(config_for(origin.port))  # shutdown_grace is the default 30 s
    assert proxy.proc is not None
    began = time.monotonic()
    proxy.signal(sig)
    assert proxy.proc.wait(5) == 0
    assert time.monotonic() - began < 2.0


# ---- access log ------------------------------------------------------------------------------


def read_lines(path: Path, expect: int, timeout: float = 5.0) -> list[str]:
    """The file's lines once there are `expect` of them (the log is flushed each second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= expect or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_access_log_rotation_by_rename_and_sighup(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port))
    path = Path(proxy.config["log"]["access_log"])
    assert request(proxy.port, "first.example.com:443")[0] == 403
    assert len(read_lines(path, 1)) == 1
    rotated = path.with_name("access.log.1")
    path.rename(rotated)  # what logrotate does
    assert request(proxy.port, "second.example.com:443")[0] == 403  # still the old file
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    assert request(proxy.port, "third.example.com:443")[0] == 403
    fresh = read_lines(path, 1)
    old = read_lines(rotated, 2)
    assert [line.count("third.example.com") for line in fresh] == [1]
    assert "first.example.com" in old[0] and "second.example.com" in old[1]
    assert len(old) == 2


def test_a_reload_moves_the_access_log_and_changes_its_format(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    """As Squid applies a changed `access_log` on reconfigure: the next record goes to the new
    file in the new format, and the old file keeps what was written before."""
    proxy = make_proxy(config_for(origin.port))
    old = Path(proxy.config["log"]["access_log"])
    moved = tmp_path / "moved" / "access.log"
    moved.parent.mkdir()
    assert request(proxy.port, "first.example.com:443")[0] == 403
    assert len(read_lines(old, 1)) == 1

    def move(config: dict[str, Any]) -> None:
        config["log"] = {**config["log"], "access_log": str(moved), "access_format": "squid"}

    reconfigure(proxy, move)
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    assert request(proxy.port, "second.example.com:443")[0] == 403
    [line] = read_lines(moved, 1)
    assert line.split()[3:7] == ["TCP_DENIED/403", "0", "CONNECT", "second.example.com:443"]
    time.sleep(1.2)  # one log flush interval: nothing more reaches the old file
    [first] = read_lines(old, 1)
    assert "first.example.com" in first


def test_squid_access_format(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port, log={"access_format": "squid"}))
    tunnel = open_tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    echo_exchange(tunnel, b"hello")
    finish(tunnel)
    assert request(proxy.port, "evil.example.com:443")[0] == 403
    lines = read_lines(Path(proxy.config["log"]["access_log"]), 2)
    assert len(lines) == 2
    # time elapsed client code/status bytes method url user hierarchy/peer type
    tunnel_line, denied_line = (line.split() for line in lines)
    now = time.time()
    for fields in (tunnel_line, denied_line):
        assert len(fields) == 10, fields
        stamp = fields[0]
        assert len(stamp.split(".")[1]) == 3 and now - 60 < float(stamp) <= now
        assert fields[1].isdigit()
        assert fields[2] == "127.0.0.1"
        assert fields[5] == "CONNECT"
        assert fields[7] == "-" and fields[9] == "-"
    assert tunnel_line[3] == "TCP_TUNNEL/200"
    assert tunnel_line[4] == str(len(b"Ehello"))  # bytes sent to the client through the tunnel
    assert tunnel_line[6] == f"{SENSOR}:{origin.port}"
    assert tunnel_line[8] == "HIER_DIRECT/127.0.0.1"
    assert denied_line[3] == "TCP_DENIED/403"
    assert denied_line[6] == "evil.example.com:443"
    assert denied_line[8] == "HIER_NONE/-"


# ---- systemd ------------------------------------------------------------------------------------


class NotifyListener:
    """The service manager's side of sd_notify: a datagram socket the proxy writes to."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)
        self.watchdog_pings = 0

    def next(self) -> str:
        """The next message that is not a watchdog ping (those are counted)."""
        while True:
            message = self.sock.recv(4096).decode()
            if message == "WATCHDOG=1":
                self.watchdog_pings += 1
                continue
            return message

    def close(self) -> None:
        self.sock.close()


def test_systemd_notifications(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100  # sockaddr_un holds 108 bytes
    listener = NotifyListener(path)
    try:
        env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        proxy = make_proxy(config_for(origin.port), env=env)
        ready = listener.next().splitlines()
        assert ready[0] == "READY=1"
        assert ready[1] == f"STATUS=serving on 127.0.0.1:{proxy.port}"

        before = listener.watchdog_pings
        time.sleep(0.6)  # a ping every 0.1 s (half of WATCHDOG_USEC)
        proxy.signal(signal.SIGHUP)
        sent_after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading = listener.next().splitlines()
        assert listener.watchdog_pings - before >= 3
        assert reloading[0] == "RELOADING=1"
        key, _, usec = reloading[1].partition("=")
        assert key == "MONOTONIC_USEC"
        assert sent_after - 5_000_000 < int(usec) < sent_after + 5_000_000
        assert listener.next().splitlines()[0] == "READY=1"

        proxy.signal(signal.SIGTERM)
        assert listener.next() == "STOPPING=1"
        assert proxy.proc is not None and proxy.proc.wait(5) == 0
    finally:
        listener.close()


# ---- --workers N ------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Live (not zombie) child processes of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def established_inodes(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is `port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
            inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def log_events(proxy: ProxyProcess, event: str) -> int:
    """How many times the supervisor and its workers (one shared stderr) logged `event`."""
    return proxy.stderr().count(f'"event": "{event}"')


def test_workers_share_the_load_sum_metrics_and_all_reload(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port), extra_args=["--workers", "2"])
    assert proxy.proc is not None
    workers = children_of(proxy.proc.pid)
    assert len(workers) == 2
    # Hold tunnels open until each worker serves some (the kernel spreads SO_REUSEPORT
    # connections by a hash), counting who holds which client connection through /proc.
    held: list[socket.socket] = []
    per_worker: dict[int, int] = {}
    while len(held) < 40:
        held.append(open_tunnel(proxy.port, f"{SENSOR}:{origin.port}"))
        clients = established_inodes(proxy.port)
        per_worker = {pid: len(clients & socket_inodes(pid)) for pid in workers}
        if len(held) >= 4 and all(per_worker.values()):
            break
    assert all(per_worker.values()) and sum(per_worker.values()) == len(held), per_worker
    samples = wait_for_metric(proxy, "connectproxy_tunnels_active", len(held), client="local")
    assert value(samples, "connectproxy_connections_active") == len(held)
    for sock in held:
        echo_exchange(sock, b"through a worker")
        finish(sock)
    tunnels = len(held)
    samples = wait_for_metric(proxy, "connectproxy_connections_active", 0)
    assert value(samples, "connectproxy_requests_total", outcome="established") == tunnels
    assert value(samples, "connectproxy_tunnel_seconds_count") == tunnels

    assert request(proxy.port, f"{UPDATES}:{origin.port}")[0] == 200
    reconfigure(proxy, lambda c: c["allow"].update(domains=[".azure-devices.net"]))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: log_events(proxy, "config reloaded") >= 3, what="supervisor + 2 reloads")
    assert [request(proxy.port, f"{UPDATES}:{origin.port}")[0] for _ in range(20)] == [403] * 20
    assert [request(proxy.port, f"{SENSOR}:{origin.port}")[0] for _ in range(5)] == [200] * 5
    # A worker applies its counts at most FLUSH_DELAY (0.1 s) after them; the supervisor reads
    # what its workers last applied.
    samples = wait_for_metric(proxy, "connectproxy_requests_total", 20, outcome="forbidden")
    assert value(samples, RELOADS, result="success") == 1  # counted once, by the supervisor
    assert value(samples, "connectproxy_ready") == 1  # the supervisor's, not its workers' 0s
    assert value(samples, "connectproxy_requests_total", outcome="forbidden") == 20


def test_workers_replace_a_killed_worker_and_stop_cleanly(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port), extra_args=["--workers", "2"])
    assert proxy.proc is not None
    supervisor = proxy.proc.pid
    victim, survivor = children_of(supervisor)
    listening = log_events(proxy, "listening")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone(victim), what="the killed worker to go")
    assert [request(proxy.port, f"{SENSOR}:{origin.port}")[0] for _ in range(10)] == [200] * 10

    def replaced() -> bool:
        kids = children_of(supervisor)
        return len(kids) == 2 and survivor in kids and victim not in kids

    wait_until(replaced, 10.0, "a replacement worker")
    wait_until(
        lambda: log_events(proxy, "listening") > listening, 10.0, "the replacement listening"
    )
    workers = children_of(supervisor)
    assert [request(proxy.port, f"{SENSOR}:{origin.port}")[0] for _ in range(20)] == [200] * 20
    wait_until(lambda: http_get(proxy.metrics_port, "/readyz")[0] == 200, what="ready again")

    proxy.signal(signal.SIGTERM)
    assert proxy.proc.wait(10) == 0
    assert all(gone(pid) for pid in workers)
