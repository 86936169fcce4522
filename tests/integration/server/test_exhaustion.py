"""Resource exhaustion against a real proxy process: slow clients, floods, one greedy source,
running out of file descriptors, and DNS that never answers. In every case a good client keeps
being served, and the proxy recovers by itself once the pressure is gone.

Distinct client sources come from binding client sockets to addresses in 127.0.0.0/8 (all of it
is loopback on Linux), so admission and the per-source limit see different clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    REPO_ROOT,
    OriginServer,
    ProxyProcess,
    echo_exchange,
    open_tunnel_from_source,
    scrape,
    status_of,
    value,
)

SENSOR = "sensor.azure-devices.net"
ROOT = REPO_ROOT


def config_for(port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "allow": {"ports": [port], "domains": [".azure-devices.net"]},
        "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
        "log": {"level": "info"},
    }
    config.update(overrides)
    return config


def served_promptly(proxy: ProxyProcess, origin: OriginServer, source: str = "127.0.0.1") -> float:
    """Open a tunnel, echo through it, close it; the seconds it all took."""
    began = time.monotonic()
    sock = open_tunnel_from_source(proxy.port, f"{SENSOR}:{origin.port}", source=source)
    echo_exchange(sock, b"Eping")
    sock.close()
    return time.monotonic() - began


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def many(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


# ---- slowloris ----------------------------------------------------------------------------------


class Dribbler:
    """Hundreds of clients, each sending its request head one byte at a time, never finishing."""

    HEAD = f"CONNECT {SENSOR}:443 HTTP/1.1\r\nX-Slow: ".encode() + b"a" * 4000

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.sockets: list[socket.socket] = []
        for i in range(count):
            # 20 clients per source address, so the per-source limit is not what stops them.
            sock = connect_from(f"127.0.1.{1 + i // 20}", port)
            sock.setblocking(False)
            self.sockets.append(sock)
        self.sent = [0] * count
        self.closed_at: list[float | None] = [None] * count
        self.answers: list[bytes] = [b""] * count
        self.interval = interval
        self.stop = threading.Event()
        self.began = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for i, sock in enumerate(self.sockets):
                if self.closed_at[i] is not None:
                    continue
                with contextlib.suppress(BlockingIOError):
                    chunk = sock.recv(4096)
                    self.answers[i] += chunk
                    if not chunk:
                        self.closed_at[i] = time.monotonic() - self.began
                        continue
                try:
                    sock.send(self.HEAD[self.sent[i] : self.sent[i] + 1])
                    self.sent[i] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_at[i] = time.monotonic() - self.began
            time.sleep(self.interval)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


def test_slowloris_does_not_starve_a_good_client(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    """400 clients dribble header bytes (one byte per client every 0.2 s) for longer than the
    handshake timeout. The good client is served promptly throughout, and every slow client is
    cut off by the handshake deadline (a total, not a per-read timeout) with a 408."""
    proxy = make_proxy(config_for(origin.port, timeouts={"handshake": 4}))
    dribbler = Dribbler(proxy.port, 400, 0.2)
    try:
        time.sleep(1.0)
        timings = []
        while time.monotonic() - dribbler.began < 3.5:
            timings.append(served_promptly(proxy, origin))
            time.sleep(0.2)
        assert max(timings) < 1.0, timings
        deadline = time.monotonic() + 10
        while any(c is None for c in dribbler.closed_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        closed = [c for c in dribbler.closed_at if c is not None]
        assert len(closed) == 400, f"{400 - len(closed)} slow clients were never cut off"
        assert max(closed) < 4 + 3, max(closed)
        assert all(status_of(a) == 408 for a in dribbler.answers), {
            a[:40] for a in dribbler.answers if status_of(a) != 408
        }
        assert min(dribbler.sent) > 5  # they really were dribbling, not stuck
    finally:
        dribbler.close()
    samples = scrape(proxy)
    assert value(samples, "connectproxy_requests_total", outcome="handshake_timeout") == 400
    assert served_promptly(proxy, origin) < 1.0


# ---- floods and the per-source limit -----------------------------------------------------------


def test_flood_above_max_connections_gets_503_and_recovers(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port, limits={"max_connections": 50}))
    with many([connect_from(f"127.0.2.{1 + i // 10}", proxy.port) for i in range(50)]) as held:
        time.sleep(0.3)
        refused = 0
        for i in range(30):
            with connect_from(f"127.0.3.{1 + i}", proxy.port) as extra:
                answer = read_all(extra)
                assert status_of(answer) == 503, answer
                assert b"Connection: close" in answer
                refused += 1
        # Held connections were not disturbed by the refusals: each can still make its request.
        sock = held[0]
        sock.sendall(f"CONNECT {SENSOR}:{origin.port} HTTP/1.1\r\n\r\nEok".encode())
        data = b""
        while not data.endswith(b"Eok"):
            data += sock.recv(100)
        assert status_of(data) == 200
    # Once the flood is gone, new clients are served again.
    deadline = time.monotonic() + 5
    while value(scrape(proxy), "connectproxy_connections_active") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert served_promptly(proxy, origin) < 1.0
    samples = scrape(proxy)
    assert value(samples, "connectproxy_requests_total", outcome="overloaded") == refused


def test_one_greedy_source_does_not_affect_others(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port, limits={"max_connections_per_source": 20}))
    with many([connect_from("127.0.4.1", proxy.port) for _ in range(20)]):
        time.sleep(0.3)
        for _ in range(20):
            with connect_from("127.0.4.1", proxy.port) as extra:
                assert status_of(read_all(extra)) == 503
        # Other sources, and 127.0.0.1, are served while the greedy one is at its limit.
        for source in ("127.0.4.2", "127.0.4.3", "127.0.0.1"):
            assert served_promptly(proxy, origin, source) < 1.0
    time.sleep(0.3)
    assert served_promptly(proxy, origin, "127.0.4.1") < 1.0  # and it may come back later


# ---- out of file descriptors -------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _run_out_of_descriptors(
    proxy: ProxyProcess, origin: OriginServer, during: Callable[[], None] = lambda: None
) -> None:
    """Lower the proxy's open-file limit under it (as an operator's ulimit, or a descriptor leak
    elsewhere, would) to 8 above what it has open, and connect 60 clients: accept() fails with
    EMFILE while the listener stays readable. The proxy must back off (not spin at 100% CPU), say
    so in the log, stay alive, and serve again once the clients leave and descriptors free up."""
    assert proxy.proc is not None
    pid = proxy.proc.pid
    limit = open_fds(pid) + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients = []
    for i in range(60):
        sock = socket.socket()
        sock.bind((f"127.0.5.{1 + i // 20}", 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", proxy.port))  # completes in the kernel's backlog
        clients.append(sock)
    time.sleep(0.5)
    with many(clients):
        assert open_fds(pid) <= limit
        during()
        time.sleep(0.2)
        before = cpu_seconds(pid)
        time.sleep(2.0)
        used = cpu_seconds(pid) - before
        assert used < 1.0, f"the proxy used {used:.2f} s of CPU in 2 s while out of descriptors"
        assert proxy.proc.poll() is None
        assert "out of file descriptors" in proxy.stderr()
    # The clients are gone; the descriptors their connections held are freed as the proxy reads
    # their EOF. New clients are served again, still under the lowered limit.
    deadline = time.monotonic() + 15
    while True:
        try:
            assert served_promptly(proxy, origin) < 2.0
            break
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
    assert proxy.proc.poll() is None
    assert "Traceback" not in proxy.stderr()


def test_out_of_file_descriptors_the_accept_loop_backs_off(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port, timeouts={"handshake": 30}))
    _run_out_of_descriptors(proxy, origin)


def test_out_of_file_descriptors_with_tunnels_open(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    """The same, while tunnels are open and carry bytes when no descriptor is left: moving them
    needs pipes (for splice) that cannot be created. The tunnels must end or wait, not fail in a
    loop (which logs a traceback per attempt)."""
    proxy = make_proxy(config_for(origin.port, timeouts={"handshake": 30}))
    tunnels = [open_tunnel_from_source(proxy.port, f"{SENSOR}:{origin.port}") for _ in range(4)]
    for sock in tunnels:
        echo_exchange(sock, b"Ewarm")

    def upload() -> None:
        for sock in tunnels:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(b"x" * 100_000)

    with many(tunnels):
        _run_out_of_descriptors(proxy, origin, upload)
    assert served_promptly(proxy, origin) < 1.0


# ---- DNS that never answers --------------------------------------------------------------------

UNSHARE = shutil.which("unshare")
IP = shutil.which("ip")

# Runs inside a private network and mount namespace (so nothing outside is affected): loopback up,
# /etc/resolv.conf bind-mounted to point at 127.0.0.1, where a UDP socket answers only
# good.azure-devices.net and swallows every other query. The proxy runs there too, and so does
# the client. Prints one JSON line of measurements.
DNS_PROBE = textwrap.dedent(
    """
    import json, socket, struct, sys, threading, time, tempfile, pathlib
    sys.path.insert(0, sys.argv[1])
    from tests.support import LOOPBACK_OK_DENY, OriginServer, ProxyProcess, request

    queries = []

    def dns_server(sock):
        while True:
            data, peer = sock.recvfrom(512)
            labels, i = [], 12
            while data[i]:
                labels.append(data[i + 1 : i + 1 + data[i]].decode())
                i += 1 + data[i]
            name = ".".join(labels).lower()
            qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
            queries.append(name)
            if name != "good.azure-devices.net":
                continue  # never answered
            question = data[12 : i + 5]
            answers = b""
            if qtype == 1:
                answers = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
            header = data[:2] + b"\\x81\\x80" + struct.pack("!HHHH", 1, 1 if answers else 0, 0, 0)
            sock.sendto(header + question + answers, peer)

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    threading.Thread(target=dns_server, args=(udp,), daemon=True).start()

    results = {}
    with OriginServer() as origin:
        config = {
            "allow": {"ports": [origin.port], "domains": [".azure-devices.net"]},
            "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
            "destinations": {"deny_networks": LOOPBACK_OK_DENY},
            "timeouts": {"connect": 2},
        }
        proxy = ProxyProcess(config, pathlib.Path(tempfile.mkdtemp()))
        proxy.start()
        try:
            began = time.monotonic()
            status, _ = request(proxy.port, f"good.azure-devices.net:{origin.port}", extra=b"E")
            results["good_alone"] = [status, time.monotonic() - began]

            began = time.monotonic()
            status, _ = request(proxy.port, f"never.azure-devices.net:{origin.port}")
            results["never"] = [status, time.monotonic() - began]

            # A storm of names that never resolve, then the good name while they are pending.
            storm = []
            def bad(n):
                began = time.monotonic()
                status, _ = request(proxy.port, f"never{n}.azure-devices.net:{origin.port}")
                storm.append([status, time.monotonic() - began])
            threads = [threading.Thread(target=bad, args=(n,)) for n in range(40)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            began = time.monotonic()
            status, _ = request(proxy.port, f"good.azure-devices.net:{origin.port}", extra=b"E")
            results["good_during_storm"] = [status, time.monotonic() - began]
            for t in threads:
                t.join(30)
            results["storm"] = storm
            results["alive"] = proxy.proc.poll() is None
            results["queries"] = len(queries)
        finally:
            proxy.proc.kill()  # a graceful stop would wait for the stuck lookups' threads
            proxy.proc.wait()
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def dns_probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assert UNSHARE and IP, "unshare and ip (util-linux, iproute2) are needed"
    resolv = tmp_path_factory.mktemp("dns") / "resolv.conf"
    # Each stuck lookup gives up after 3 s, longer than the proxy's connect timeout of 2 s.
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:3 attempts:1\n")
    script = (
        f"{IP} link set lo up && mount --bind {resolv} /etc/resolv.conf && "
        f'exec {sys.executable} -c "$0" {ROOT}'
    )
    result = subprocess.run(
        [UNSHARE, "--net", "--mount", "sh", "-c", script, DNS_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def test_dns_that_never_answers_is_bounded_by_the_connect_timeout(
    dns_probe: dict[str, Any],
) -> None:
    status, seconds = dns_probe["good_alone"]
    assert status == 200 and seconds < 1.0  # the namespace's DNS works for the good name
    status, seconds = dns_probe["never"]
    assert status == 504, dns_probe
    assert 1.8 < seconds < 3.5, dns_probe  # timeouts.connect is 2 s
    assert dns_probe["queries"] > 0  # the proxy really asked our silent server
    assert dns_probe["alive"]


def test_lookups_that_never_answer_do_not_block_other_lookups(
    dns_probe: dict[str, Any],
) -> None:
    """40 clients ask for names whose DNS never answers; a client asking for a name that
    resolves at once must still be served, not wait behind the stuck lookups."""
    assert all(status == 504 and seconds < 3.5 for status, seconds in dns_probe["storm"]), dns_probe
    status, seconds = dns_probe["good_during_storm"]
    assert status == 200, dns_probe
    assert seconds < 1.0, dns_probe
