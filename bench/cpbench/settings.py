"""What a run is asked to do (Settings), and the names every part of the benchmark shares."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
TARGET_HOST = "bench.azure-devices.net"
DENIED_HOST = "denied.example.com"
# "connectproxy-large": connectproxy on the same config grown to 10,000 domain patterns across
# 100 policies, 1,000 clients and 1,000 users (largeconfig.py), to set beside "connectproxy".
LARGE = "connectproxy-large"
# "connectproxy-tls": connectproxy with the TLS guard (`tls: verify_sni`), so every tunnel's
# ClientHello is read, parsed, fingerprinted and checked; the run then sends one (client_hello).
TLS_GUARD = "connectproxy-tls"
KNOWN_PROXIES = ("connectproxy", "squid", "direct", LARGE, TLS_GUARD)
# "connectproxy-w2": connectproxy with --workers 2, so one run can compare worker counts.
WORKERS_NAME = re.compile(r"connectproxy-w([1-9][0-9]?)")
SCENARIOS = ("rate", "throughput", "idle")
# Not part of "all": counts that need a tracer around the proxy (valgrind makes it 50 times
# slower, strace several times), and that do not drift with the machine's speed.
INSTRUCTIONS = "instructions"
SYSCALLS = "syscalls"
TRANSFERS = (("up", 1), ("down", 1), ("up", 8), ("down", 8))

JsonDict = dict[str, Any]


class BenchError(Exception):
    """Something that makes the measurement meaningless: said plainly, without a traceback."""


@dataclass(frozen=True)
class Settings:
    """The command line, checked, with --quick applied: the run reads this, never argv, and
    records it whole in the result file so a figure can be traced to how it was measured."""

    proxies: tuple[str, ...]
    scenarios: tuple[str, ...]
    rounds: int
    duration: float
    lat_duration: float
    concurrency: int
    warmup: int
    bytes: int
    max_seconds: float
    idle_tunnels: int
    idle_hold: float
    open_concurrency: int
    echo_timeout: float
    workers: int | None
    connectproxy: str
    squid: str
    proxy_cpu: int | None  # None: a single-CPU machine, nothing is pinned
    client_cpu: int | None
    unpinned: bool  # nothing is pinned (proxy_cpu and client_cpu are None)
    out: Path | None
    keep_rundir: bool
    quick: bool
    congestion_control: str | None  # the system's algorithm for the run; None: leave it
    # Every tunnel of every proxy starts with a real TLS ClientHello for TARGET_HOST, as a TLS
    # client's does; the same bytes for each proxy, so the comparison stays like for like.
    client_hello: bool = False
