#!/usr/bin/env python3
"""How long `GET /api/tunnels` takes with thousands of tunnels open and bulk data flowing, and
whether answering it stalls the tunnels (SPEC section 7.1: 5,000 tunnels in under 200 ms).

The admin API answers on the event loop that carries every tunnel, so a slow listing would be a
pause of every tunnel. This measures both sides at once, with three processes besides this one:

  origin   echo for the held tunnels and the probe; an endless stream for the bulk tunnels
  proxy    connectproxy with an admin token, on loopback
  load     holds N idle tunnels, reads B bulk downloads as fast as it can, and pings a probe
           tunnel (one byte, echoed) every 10 ms, recording each round trip and the bulk bytes

After a baseline of two seconds this process (which does nothing else, so its timings are the
proxy's) asks for the list `--requests` times, 100 ms apart, and checks every answer lists
every tunnel. Figures: the listing's time (median, max), the probe's round trips outside and
during the listings, and the bulk rate outside and during them.

    python3 bench/admin_list.py                     # 5,000 tunnels, 4 bulk, 20 listings
    python3 bench/admin_list.py --tunnels 1000 --requests 10 --json

Exit status 0 when every tunnel opened and stayed open and every listing was complete; 1
otherwise. Every process it starts it stops by PID. Only the standard library is used; the
proxy is `--connectproxy` (default: .venv/bin/connectproxy of this tree).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.example.com"
TOKEN = "b" * 48
BLOCK = 1 << 16


def raise_fd_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the origin -----------------------------------------------------------------------------


async def _origin(port_file: Path) -> None:
    stream = os.urandom(BLOCK)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            mode = await reader.readexactly(1)
            if mode == b"D":
                while True:
                    writer.write(stream)
                    await writer.drain()
            writer.write(mode)
            while data := await reader.read(BLOCK):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


# ---- the load -------------------------------------------------------------------------------


class Load:
    def __init__(self, proxy_port: int, target: str, bulk_rate: float) -> None:
        self.bulk_rate = bulk_rate  # bytes/s of each download
        self.proxy_port = proxy_port
        self.target = target
        self.held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.failed = 0
        self.bulk_bytes = 0
        self.bulk_ended = 0
        self.probe: list[tuple[float, float]] = []  # (wall time, round trip in s)
        self.bulk: list[tuple[float, int]] = []  # (wall time, bulk bytes so far)
        self.stopping = asyncio.Event()

    async def open(self, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy_port)
        writer.write(f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        writer.write(first)
        return reader, writer

    async def hold(self, count: int, concurrency: int = 200) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                try:
                    reader, writer = await self.open(b"E")
                    if await reader.readexactly(1) != b"E":
                        raise ConnectionError("no echo")
                    self.held.append((reader, writer))
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    self.failed += 1

        await asyncio.gather(*(one() for _ in range(count)))

    async def download(self) -> None:
        reader, _writer = await self.open(b"D")
        began, got = time.monotonic(), 0
        while data := await reader.read(1 << 20):
            self.bulk_bytes += len(data)
            got += len(data)
            ahead = got / self.bulk_rate - (time.monotonic() - began)
            if ahead > 0:  # paced: the window fills, TCP slows the origin down
                await asyncio.sleep(ahead)
        if not self.stopping.is_set():
            self.bulk_ended += 1

    async def ping(self) -> None:
        reader, writer = await self.open(b"E")
        await reader.readexactly(1)
        while not self.stopping.is_set():
            began = time.perf_counter()
            writer.write(b"p")
            await reader.readexactly(1)
            self.probe.append((time.time(), time.perf_counter() - began))
            await asyncio.sleep(0.01)

    async def sample(self) -> None:
        while not self.stopping.is_set():
            self.bulk.append((time.time(), self.bulk_bytes))
            await asyncio.sleep(0.1)


async def _load(proxy_port: int, target: str, tunnels: int, bulk: int, rate: float) -> None:
    load = Load(proxy_port, target, rate)
    await load.hold(tunnels)
    tasks = [asyncio.ensure_future(load.download()) for _ in range(bulk)]
    tasks.append(asyncio.ensure_future(load.ping()))
    tasks.append(asyncio.ensure_future(load.sample()))
    await asyncio.sleep(1.0)  # the bulk transfers under way
    print(json.dumps({"ready": len(load.held), "failed": load.failed}), flush=True)
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), load.stopping.set)  # the driver closes our stdin
    await load.stopping.wait()
    loop.remove_reader(sys.stdin.fileno())
    for task in tasks:
        task.cancel()
    result = {
        # A held tunnel the proxy closed has read its end.
        "held_closed": sum(1 for r, w in load.held if r.at_eof() or w.is_closing()),
        "bulk_ended": load.bulk_ended,
        "probe": load.probe,
        "bulk": load.bulk,
    }
    print(json.dumps(result), flush=True)


# ---- the driver -----------------------------------------------------------------------------


def _list_once(metrics_port: int) -> tuple[float, float, int, int]:
    """(wall start, seconds, rows, body bytes) of one GET /api/tunnels."""
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=30)
    start = time.time()
    began = time.perf_counter()
    conn.request("GET", "/api/tunnels", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    body = response.read()
    took = time.perf_counter() - began
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET /api/tunnels answered {response.status}: {body[:200]!r}")
    return start, took, len(json.loads(body)), len(body)


def _wait_ready(metrics_port: int, proc: subprocess.Popen[bytes], err: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"connectproxy exited: {err.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", metrics_port), timeout=0.5) as s:
                s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("connectproxy did not become ready")


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="cp-adminlist-"))
    script = str(Path(__file__).resolve())
    origin = proxy = load = None
    try:
        port_file = work / "origin.port"
        origin = subprocess.Popen([sys.executable, script, "--role", "origin", str(port_file)])
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or origin.poll() is not None:
                raise RuntimeError("the origin did not start")
            time.sleep(0.05)
        origin_port = int(port_file.read_text())
        proxy_port, metrics_port = free_port(), free_port()
        (work / "admin.token").write_text(TOKEN + "\n")
        config = {
            "listen": [f"127.0.0.1:{proxy_port}"],
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "admin": {"token_file": "admin.token"},
            "allow": {"ports": [origin_port], "domains": [HOST]},
            "clients": [{"name": "bench", "networks": ["127.0.0.0/8"]}],
            "destinations": {
                "hosts": {HOST: "127.0.0.1"},
                "deny_networks": ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"],
            },
            "limits": {"max_connections": 20000, "max_connections_per_source": 20000},
            "log": {"level": "warning", "access_log": str(work / "access.log")},
        }
        (work / "connectproxy.yaml").write_text(json.dumps(config))  # JSON is YAML
        err = work / "proxy.stderr"
        proxy = subprocess.Popen(
            [args.connectproxy, "run", "--config", str(work / "connectproxy.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=err.open("wb"),
        )
        _wait_ready(metrics_port, proxy, err)
        target = f"{HOST}:{origin_port}"
        load = subprocess.Popen(
            [
                sys.executable,
                script,
                "--role",
                "load",
                str(proxy_port),
                target,
                str(args.tunnels),
                str(args.bulk),
                str(args.bulk_mb_per_s * 1e6 / max(1, args.bulk)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert load.stdout is not None and load.stdin is not None
        ready = json.loads(load.stdout.readline() or b"{}")
        if "ready" not in ready:
            raise RuntimeError("the load process did not get its tunnels open")
        expected_rows = ready["ready"] + args.bulk + 1
        baseline_end = time.time() + 2.0
        time.sleep(2.0)
        listings = []
        for _ in range(args.requests):
            listings.append(_list_once(metrics_port))
            time.sleep(0.1)
        load.stdin.close()
        result = json.loads(load.stdout.readline() or b"{}")
        load.wait(30)
        windows = [(start, start + took) for start, took, _, _ in listings]

        def during(ts: float) -> bool:
            return any(lo - 0.005 <= ts <= hi + 0.005 for lo, hi in windows)

        probe = result.get("probe", [])
        quiet_rtt = [rtt for ts, rtt in probe if ts < baseline_end]
        busy_rtt = [rtt for ts, rtt in probe if during(ts)]
        bulk = result.get("bulk", [])

        def rate(lo: float, hi: float) -> float:
            inside = [(ts, n) for ts, n in bulk if lo <= ts <= hi]
            if len(inside) < 2:
                return 0.0
            moved = float(inside[-1][1] - inside[0][1])
            seconds = float(inside[-1][0] - inside[0][0])
            return moved / seconds / 1e6

        took_ms = [took * 1000 for _, took, _, _ in listings]
        rows = [n for _, _, n, _ in listings]
        figures: dict[str, Any] = {
            "tunnels_requested": args.tunnels,
            "tunnels_held": ready["ready"],
            "open_failures": ready["failed"],
            "bulk_tunnels": args.bulk,
            "listings": len(listings),
            "rows_expected": expected_rows,
            "rows_min": min(rows),
            "rows_max": max(rows),
            "body_kib": round(listings[-1][3] / 1024, 1),
            "list_ms_p50": round(statistics.median(took_ms), 1),
            "list_ms_max": round(max(took_ms), 1),
            "list_ms_first": round(took_ms[0], 1),  # the one that formats every fixed field
            "list_ms_each": [round(ms, 1) for ms in took_ms],
            "probe_rtt_ms_baseline_p50": round(_percentile(quiet_rtt, 0.5) * 1000, 2),
            "probe_rtt_ms_baseline_max": round(max(quiet_rtt, default=0.0) * 1000, 2),
            "probe_rtt_ms_during_listing_max": round(max(busy_rtt, default=0.0) * 1000, 2),
            "probe_samples_during_listing": len(busy_rtt),
            "bulk_mb_per_s_baseline": round(rate(baseline_end - 2.0, baseline_end), 1),
            "bulk_mb_per_s_while_listing": round(rate(windows[0][0], windows[-1][1]), 1),
            "held_closed": result.get("held_closed"),
            "bulk_ended": result.get("bulk_ended"),
        }
        figures["ok"] = (
            figures["open_failures"] == 0
            and figures["rows_min"] == expected_rows == figures["rows_max"]
            and figures["held_closed"] == 0
            and figures["bulk_ended"] == 0
        )
        return figures
    finally:
        for proc in (load, proxy, origin):
            _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=5000, help="idle tunnels held open")
    parser.add_argument("--bulk", type=int, default=4, help="tunnels downloading all the time")
    parser.add_argument(
        "--bulk-mb-per-s",
        type=float,
        default=100.0,
        help="the bulk tunnels' rate together (paced by the reader, so on a small machine "
        "the Python origin and load leave the proxy a core); default 100",
    )
    parser.add_argument("--requests", type=int, default=20, help="listings timed")
    parser.add_argument(
        "--connectproxy",
        default=str(ROOT / ".venv" / "bin" / "connectproxy"),
        help="the executable (default: .venv/bin/connectproxy)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        raise_fd_limit()
        role, *rest = args.role
        if role == "origin":
            asyncio.run(_origin(Path(rest[0])))
        else:
            asyncio.run(_load(int(rest[0]), rest[1], int(rest[2]), int(rest[3]), float(rest[4])))
        return 0
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
