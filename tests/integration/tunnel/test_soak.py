"""Soak: thousands of concurrent tunnels held and exercised for minutes, with continuous churn and
periodic SIGHUP reloads, against a real proxy process.

Three processes share the 2-core machine and each has its own descriptor limit: the proxy (2
sockets per tunnel), an echo origin written here (a small uvloop server run with `python -c`),
and this test process as the client (one uvloop event loop driving every tunnel). Client sockets
are bound to 50 source addresses in 127.0.10.0/24 so neither the per-source limit nor one
address's ephemeral ports is what the soak measures.

Promises checked: zero failed requests or echo mismatches from these good clients; no leaked
sockets (the proxy's open sockets back to the baseline); RSS flat after warm-up; the byte
counters in the metrics equal to what the clients sent and received; every reload succeeded.
The figures are printed (run with `-rP` or `-s` to see them) and attached to any failure.

Sizes come from the environment for local experiments: SOAK_TUNNELS (default 5000) and
SOAK_SECONDS (default 180).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.conftest import ProxyFactory
from tests.support import LOOPBACK_OK_DENY, ProxyProcess, rss_kib, scrape, socket_count, value

SENSOR = "sensor.azure-devices.net"
TUNNELS = int(os.environ.get("SOAK_TUNNELS", "5000"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
RELOAD_EVERY = 20.0
SOURCES = [f"127.0.10.{i}" for i in range(1, 51)]
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

ORIGIN = textwrap.dedent(
    """
    import asyncio, resource, sys, uvloop
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(10**9)

    uvloop.run(main())
    """
)


@dataclass
class Figures:
    tunnels_target: int = TUNNELS
    seconds: float = SECONDS
    opened: int = 0
    closed: int = 0
    exchanges: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    peak_concurrent: int = 0
    reloads: int = 0
    rss_kib: list[int] = field(default_factory=list)
    sockets: list[int] = field(default_factory=list)
    concurrent: list[int] = field(default_factory=list)
    baseline_sockets: int = 0
    final_sockets: int = 0
    metrics_bytes_client_to_server: float = 0.0
    metrics_bytes_server_to_client: float = 0.0
    metrics_established: float = 0.0
    metrics_reload_success: float = 0.0
    metrics_reload_failure: float = 0.0

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.failure_samples) < 10:
            self.failure_samples.append(what)


class Load:
    """The client side: TUNNELS workers, each holding one tunnel at a time and replacing it
    after a few exchanges."""

    def __init__(self, proxy_port: int, origin_port: int, figures: Figures) -> None:
        self.proxy_port = proxy_port
        self.head = f"CONNECT {SENSOR}:{origin_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.figures = figures
        self.open_now = 0
        self.stopping = False
        self.rng = random.Random(1234)

    async def worker(self, index: int, ramp_delay: float) -> None:
        await asyncio.sleep(ramp_delay)
        source = SOURCES[index % len(SOURCES)]
        while not self.stopping:
            await self.one_tunnel(source)

    async def one_tunnel(self, source: str) -> None:
        figures = self.figures
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.proxy_port, local_addr=(source, 0)),
                30,
            )
            writer.write(self.head)
            answer = await asyncio.wait_for(reader.readexactly(len(ESTABLISHED)), 30)
            if answer != ESTABLISHED:
                figures.fail(f"answer {answer[:60]!r}")
                return
            figures.opened += 1
            self.open_now += 1
            figures.peak_concurrent = max(figures.peak_concurrent, self.open_now)
            try:
                for _ in range(self.rng.randint(3, 12)):
                    await asyncio.sleep(self.rng.uniform(2.0, 8.0))
                    if self.stopping:
                        break
                    payload = self.rng.randbytes(self.rng.randint(64, 4096))
                    writer.write(payload)
                    figures.bytes_sent += len(payload)
                    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
                    figures.bytes_received += len(echoed)
                    if echoed != payload:
                        figures.fail("echo mismatch")
                        return
                    figures.exchanges += 1
                writer.write_eof()
                rest = await asyncio.wait_for(reader.read(), 30)
                if rest:
                    figures.fail(f"{len(rest)} unexpected bytes before EOF")
                figures.closed += 1
            finally:
                self.open_now -= 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            figures.fail(f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()


def proxy_sockets(proxy: ProxyProcess) -> int:
    assert proxy.proc is not None
    return socket_count(proxy.proc.pid)


async def drive(proxy: ProxyProcess, origin_port: int, figures: Figures) -> None:
    assert proxy.proc is not None
    pid = proxy.proc.pid
    load = Load(proxy.port, origin_port, figures)
    ramp = 20.0  # seconds over which the tunnels are first opened
    workers = [asyncio.ensure_future(load.worker(i, ramp * i / TUNNELS)) for i in range(TUNNELS)]
    began = time.monotonic()
    next_reload = began + RELOAD_EVERY
    while time.monotonic() - began < ramp + SECONDS:
        await asyncio.sleep(5)
        figures.rss_kib.append(rss_kib(pid))
        figures.sockets.append(proxy_sockets(proxy))
        figures.concurrent.append(load.open_now)
        if time.monotonic() >= next_reload:
            os.kill(pid, signal.SIGHUP)
            figures.reloads += 1
            next_reload += RELOAD_EVERY
    load.stopping = True
    await asyncio.wait_for(asyncio.gather(*workers), 60)


@pytest.fixture()
def echo_origin() -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", ORIGIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_soak(make_proxy: ProxyFactory, echo_origin: int, tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= TUNNELS + 1000, f"the open-file limit {hard} is too low for {TUNNELS} tunnels"
    config = {
        "allow": {"ports": [echo_origin], "domains": [".azure-devices.net"]},
        "clients": [{"name": "soak", "networks": ["127.0.0.0/8"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
        "limits": {"max_connections": 10000, "max_connections_per_source": 10000},
        "timeouts": {"idle": 120, "handshake": 30, "connect": 10},
        "log": {"level": "warning"},
    }
    proxy = make_proxy(config)
    figures = Figures()
    figures.baseline_sockets = proxy_sockets(proxy)
    try:
        uvloop.run(drive(proxy, echo_origin, figures))
        deadline = time.monotonic() + 30
        while proxy_sockets(proxy) > figures.baseline_sockets and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.5)  # one more flush of live byte counts, though every tunnel has closed
        figures.final_sockets = proxy_sockets(proxy)
        samples = scrape(proxy)
        bytes_total = "connectproxy_tunnel_bytes_total"
        figures.metrics_bytes_client_to_server = value(
            samples, bytes_total, client="soak", direction="client_to_server"
        )
        figures.metrics_bytes_server_to_client = value(
            samples, bytes_total, client="soak", direction="server_to_client"
        )
        figures.metrics_established = value(
            samples, "connectproxy_requests_total", outcome="established"
        )
        reloads = "connectproxy_config_reloads_total"
        figures.metrics_reload_success = value(samples, reloads, result="success")
        figures.metrics_reload_failure = value(samples, reloads, result="failure")
    finally:
        report = json.dumps(asdict(figures), indent=1)
        (tmp_path / "soak.json").write_text(report)
        print("soak figures:", report)

    summary = {k: v for k, v in asdict(figures).items() if not isinstance(v, list)}
    assert figures.failures == 0, (figures.failure_samples, summary)
    assert figures.peak_concurrent >= TUNNELS * 0.95, summary
    assert figures.closed > TUNNELS, summary  # churn: more tunnels closed than are held at once
    assert figures.metrics_established == figures.opened, summary
    assert figures.metrics_bytes_client_to_server == figures.bytes_sent, summary
    assert figures.metrics_bytes_server_to_client == figures.bytes_received, summary
    assert figures.final_sockets <= figures.baseline_sockets, summary
    assert figures.metrics_reload_success == figures.reloads > 0, summary
    assert figures.metrics_reload_failure == 0, summary
    # RSS flat after warm-up: from the first sample after the ramp and a minute of traffic to the
    # end, growth stays under 10% (and under 32 MiB).
    warm = figures.rss_kib[len(figures.rss_kib) // 3]
    last = max(figures.rss_kib[len(figures.rss_kib) // 3 :])
    assert last - warm < min(32 * 1024, warm // 10), (figures.rss_kib, summary)
    assert "Traceback" not in proxy.stderr()
