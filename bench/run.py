#!/usr/bin/env python3
"""Benchmark connectproxy against Squid on loopback, side by side, in one run.

Why this shape: on a small shared machine the only fair comparison is one where both proxies get
the same core, the same client, the same origin and the same minute of machine noise. So the proxy
under test (with every process it forks) is pinned to one CPU, the C load generator and the C
origin to another, and each round runs every proxy in turn on a fresh process. Figures are medians
over rounds, and the ratio column is candidate / squid.

Scenarios (each on a fresh proxy process, after a warm-up that must succeed):
  rate        50 closed-loop clients: connect, CONNECT, 200, 64-byte echo, close -> tunnels/s;
              then one client at a time for the latency of CONNECT -> 200.
  throughput  bulk up and down through 1 and 8 tunnels -> GB/s and proxy CPU seconds per GB.
  idle        5,000 open idle tunnels -> proxy memory per tunnel; then every one must still echo.

Only the Python standard library is used, so any python3 >= 3.11 can run it. Every process it
starts it stops by PID; every wait is bounded. See bench/README.md for the figures' meaning.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TARGET_HOST = "bench.azure-devices.net"
DENIED_HOST = "denied.example.com"
KNOWN_PROXIES = ("connectproxy", "squid", "direct")
# "connectproxy-w2": connectproxy with --workers 2, so one run can compare worker counts.
WORKERS_NAME = re.compile(r"connectproxy-w([1-9][0-9]?)")
SCENARIOS = ("rate", "throughput", "idle")
# Not part of "all": counts that need a tracer around the proxy (valgrind makes it 50 times
# slower, strace several times), and that do not drift with the machine's speed.
INSTRUCTIONS = "instructions"
SYSCALLS = "syscalls"
TRANSFERS = (("up", 1), ("down", 1), ("up", 8), ("down", 8))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

JsonDict = dict[str, Any]


class BenchError(Exception):
    """Something that makes the measurement meaningless: said plainly, without a traceback."""


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
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


def parse_size(text: str) -> int:
    """'4G', '512M', '1e9' or a plain count of bytes (binary units: G = 2**30)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGkmg]?)i?[Bb]?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4G, 512M or 1000000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def parse_args(argv: Sequence[str] | None) -> Settings:
    default_cp = REPO_DIR / ".venv" / "bin" / "connectproxy"
    p = argparse.ArgumentParser(
        description="Benchmark connectproxy against Squid on loopback (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--proxies",
        default=None,
        help="comma-separated, from: connectproxy, squid, direct (no proxy: the "
        "harness's own limit), connectproxy-wN (connectproxy --workers N). "
        "Default: connectproxy and, if installed, squid",
    )
    p.add_argument(
        "--scenario",
        choices=(*SCENARIOS, INSTRUCTIONS, SYSCALLS, "all"),
        default="all",
        help="all = rate, throughput and idle; instructions (valgrind's callgrind) and syscalls "
        "(strace) count user-space instructions and system calls per tunnel, figures the "
        "machine's speed does not change",
    )
    p.add_argument("--rounds", type=int, default=3, help="figures are medians over rounds")
    p.add_argument("--duration", type=float, default=10.0, help="rate: seconds at C clients")
    p.add_argument("--lat-duration", type=float, default=2.0, help="rate: seconds at C=1")
    p.add_argument("--concurrency", type=int, default=50, help="rate: closed-loop clients")
    p.add_argument("--warmup", type=int, default=300, help="exchanges before each scenario")
    p.add_argument(
        "--bytes",
        type=parse_size,
        default=4 << 30,
        help="throughput: bytes per transfer, split across its tunnels",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="throughput: cap per transfer (what arrived by then still counts)",
    )
    p.add_argument("--idle-tunnels", type=int, default=5000)
    p.add_argument("--idle-hold", type=float, default=10.0, help="idle: seconds to hold")
    p.add_argument(
        "--open-concurrency", type=int, default=200, help="idle: handshakes in flight while opening"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="pass --workers N to connectproxy (omitted when not given)",
    )
    p.add_argument(
        "--connectproxy",
        default=str(default_cp) if default_cp.exists() else "connectproxy",
        help="the connectproxy executable",
    )
    p.add_argument("--squid", default="/usr/sbin/squid", help="the squid executable")
    p.add_argument("--proxy-cpu", type=int, default=None, help="default: the first CPU")
    p.add_argument("--client-cpu", type=int, default=None, help="default: the second CPU")
    p.add_argument(
        "--unpinned",
        action="store_true",
        help="pin nothing: proxy, load generator and origin share every CPU. For --workers "
        "scaling on a machine where the load generator cannot run elsewhere",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default: bench/results/<proxies>-<scenario>-<time>.json)",
    )
    p.add_argument(
        "--keep-rundir",
        action="store_true",
        help="keep the run folder (configs, proxy logs, access logs)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny smoke run (seconds): 1 round, short phases, small transfers",
    )
    p.add_argument(
        "--congestion-control",
        default=None,
        metavar="NAME",
        help="run under this TCP congestion control (net.ipv4.tcp_congestion_control, for every "
        "proxy, the load generator and the origin alike; restored afterwards; needs root). "
        "Default: the machine's own, recorded in the results",
    )
    a = p.parse_args(argv)

    if a.proxies is None and a.scenario == INSTRUCTIONS:
        names = ["connectproxy"]
    elif a.proxies is None:
        names = ["connectproxy"] + (["squid"] if Path(a.squid).exists() else [])
    else:
        names = [n.strip() for n in a.proxies.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN_PROXIES and not WORKERS_NAME.fullmatch(n)]
    if unknown or not names or len(set(names)) != len(names):
        p.error(f"--proxies: give distinct names from {', '.join(KNOWN_PROXIES)}, connectproxy-wN")
    if "squid" in names and shutil.which(a.squid) is None:
        p.error(f"--proxies: squid is not installed at {a.squid} (use --squid PATH)")
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be at least 1")
    if a.quick:
        a.rounds, a.duration, a.lat_duration, a.warmup = 1, 1.0, 0.5, 100
        a.bytes, a.max_seconds = min(a.bytes, 256 << 20), 5.0
        a.idle_tunnels, a.idle_hold = min(a.idle_tunnels, 200), 0.5
    for name in ("rounds", "concurrency", "warmup", "idle_tunnels", "open_concurrency"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.bytes < 8:
        p.error("--bytes must be at least 8")
    if a.scenario == INSTRUCTIONS:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            p.error("--scenario instructions needs valgrind (apt-get install -y valgrind)")
        if names != ["connectproxy"] or a.workers is not None:
            # A process that sleeps (Squid's master in waitpid, our supervisor with --workers)
            # never takes callgrind's command to start counting: only a single connectproxy
            # process can be measured this way.
            p.error("--scenario instructions measures one connectproxy process (no --workers)")
    if a.scenario == SYSCALLS:
        if shutil.which("strace") is None:
            p.error("--scenario syscalls needs strace (apt-get install -y strace)")
        if "direct" in names:
            p.error("--scenario syscalls measures proxies; drop direct")
    if a.congestion_control is not None:
        available = read_sysctl(CC_AVAILABLE).split()
        if a.congestion_control not in available:
            p.error(
                f"--congestion-control: {a.congestion_control!r} is not one of this kernel's "
                f"({', '.join(available)})"
            )
        if not os.access(CC_SYSCTL, os.W_OK):
            p.error(f"--congestion-control sets {CC_SYSCTL}, which needs root")
    cpus = sorted(os.sched_getaffinity(0))
    if a.unpinned:
        if a.proxy_cpu is not None or a.client_cpu is not None:
            p.error("--unpinned pins nothing: drop --proxy-cpu and --client-cpu")
    elif len(cpus) >= 2:
        a.proxy_cpu = cpus[0] if a.proxy_cpu is None else a.proxy_cpu
        a.client_cpu = cpus[1] if a.client_cpu is None else a.client_cpu
        if a.proxy_cpu not in cpus or a.client_cpu not in cpus or a.proxy_cpu == a.client_cpu:
            p.error(f"--proxy-cpu and --client-cpu must be two different CPUs of {cpus}")
    elif a.proxy_cpu is not None or a.client_cpu is not None:
        p.error("pinning needs two CPUs; this process may only use one")
    return Settings(
        proxies=tuple(names),
        scenarios=SCENARIOS if a.scenario == "all" else (a.scenario,),
        rounds=a.rounds,
        duration=a.duration,
        lat_duration=a.lat_duration,
        concurrency=a.concurrency,
        warmup=a.warmup,
        bytes=a.bytes,
        max_seconds=a.max_seconds,
        idle_tunnels=a.idle_tunnels,
        idle_hold=a.idle_hold,
        open_concurrency=a.open_concurrency,
        echo_timeout=5.0 if a.quick else 15.0,
        workers=a.workers,
        connectproxy=a.connectproxy,
        squid=a.squid,
        proxy_cpu=a.proxy_cpu,
        client_cpu=a.client_cpu,
        unpinned=a.unpinned,
        out=a.out,
        keep_rundir=a.keep_rundir,
        quick=a.quick,
        congestion_control=a.congestion_control,
    )


# ------------------------------------------------------------------------------------ /proc

# Loopback throughput depends on the congestion control more than on either proxy: on the
# build machine, under BBR every sender is paced to about 2 GB/s a flow, and under CUBIC (the
# kernel's default) the same proxies move several times more. So a run records which one it had,
# and `--congestion-control` runs under a chosen one (bench/README.md).
CC_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")
CC_AVAILABLE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


def read_sysctl(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown"


@contextlib.contextmanager
def congestion_control(name: str | None) -> Iterator[None]:
    """The system's TCP congestion control is `name` inside the block (new sockets take it
    when they are created), and what it was again after it, however the block ends."""
    if name is None:
        yield
        return
    before = CC_SYSCTL.read_text().strip()
    CC_SYSCTL.write_text(name)
    try:
        yield
    finally:
        CC_SYSCTL.write_text(before)


class ProcStat(NamedTuple):
    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) names a process uniquely
    ticks: int  # utime + stime + cutime + cstime
    zombie: bool


def read_stat(pid: int) -> ProcStat | None:
    """A process's /proc/PID/stat, None if it is gone.

    Children reaped during a measurement move their time into the parent's cutime/cstime, so
    summing all four CPU fields over a tree counts every tick exactly once."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return ProcStat(
        ppid=int(fields[1]),
        start=int(fields[19]),
        ticks=sum(int(x) for x in fields[11:15]),
        zombie=fields[0] in ("Z", "X"),
    )


def still_running(pid: int, start: int) -> bool:
    """Whether (pid, start) is alive; a zombie counts as gone and is reaped if it is ours.

    The driver is a child subreaper, so a proxy's orphaned helpers become its children; without
    the reaping they would stay zombies (this machine's PID 1 does not reap them)."""
    stat = read_stat(pid)
    if stat is None or stat.start != start:
        return False
    if stat.zombie:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def scan_processes() -> dict[int, ProcStat]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            procs[int(entry)] = stat
    return procs


def tree_in(root: int, procs: dict[int, ProcStat]) -> list[int]:
    """root and all its descendants among `procs`."""
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree, todo = [], [root] if root in procs else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_tree(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of root and all its descendants."""
    procs = scan_processes()
    return [(pid, procs[pid].start) for pid in tree_in(root, procs)]


def tree_rss_kib(root: int) -> tuple[int, int]:
    """(sum of resident set sizes in KiB, process count) over a process tree."""
    total, count = 0, 0
    for pid, _ in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
            count += 1
    return total, count


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy ticks, total ticks) from /proc/stat."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            ticks = [int(x) for x in m.group(2).split()[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            result[int(m.group(1))] = (sum(ticks) - idle, sum(ticks))
    return result


@dataclass(frozen=True)
class Snapshot:
    """What the driver records at each edge of a measured interval.

    `others` holds (parent pid, CPU ticks) of every process outside this benchmark (kernel
    threads excluded), keyed by (pid, start time): on a shared machine that is the noise."""

    t: float
    proxy_ticks: int
    client_ticks: int  # the load generator and the origin
    others: dict[tuple[int, int], tuple[int, int]]
    cpus: dict[int, tuple[int, int]]

    @staticmethod
    def take(proxy_pid: int | None, client_pids: Sequence[int]) -> Snapshot:
        procs = scan_processes()
        ours = set(tree_in(os.getpid(), procs))
        return Snapshot(
            t=time.monotonic(),
            proxy_ticks=sum(procs[p].ticks for p in tree_in(proxy_pid, procs)) if proxy_pid else 0,
            client_ticks=sum(procs[p].ticks for p in client_pids if p in procs),
            others={
                (pid, st.start): (st.ppid, st.ticks)
                for pid, st in procs.items()
                if pid not in ours and pid != 2 and st.ppid != 2
            },
            cpus=cpu_times(),
        )


def other_ticks(a: Snapshot, b: Snapshot) -> int:
    """CPU ticks that processes outside the benchmark used between two snapshots.

    Ticks include reaped children's (cutime/cstime), so the growth of every surviving process
    counts, and a process that started in between counts whole. A process that ended in between
    had its whole lifetime added to a surviving ancestor: what it had already used at `a` is
    taken back out, so only its ticks inside the interval remain."""
    total = sum(ticks - a.others.get(key, (0, 0))[1] for key, (_, ticks) in b.others.items())
    alive_a = {pid for pid, _ in a.others}
    alive_b = {pid for pid, _ in b.others}
    parent = {pid: ppid for (pid, _), (ppid, _) in a.others.items()}
    for (pid, start), (ppid, ticks) in a.others.items():
        if (pid, start) in b.others:
            continue
        ancestor = ppid
        while ancestor in alive_a and ancestor not in alive_b:
            ancestor = parent[ancestor]
        if ancestor in alive_b:
            total -= ticks
    return max(total, 0)


def interval(a: Snapshot, b: Snapshot, proxy_cpu: int | None, client_cpu: int | None) -> JsonDict:
    """CPU use between two snapshots, in percent of one core."""
    dt = max(b.t - a.t, 1e-9)

    def busy(cpu: int | None) -> float | None:
        if cpu is None:
            return None
        db = b.cpus[cpu][0] - a.cpus[cpu][0]
        dtotal = b.cpus[cpu][1] - a.cpus[cpu][1]
        return 100.0 * db / dtotal if dtotal > 0 else 0.0

    proxy_cpu_s = (b.proxy_ticks - a.proxy_ticks) / CLK_TCK
    return {
        "seconds": dt,
        "proxy_cpu_s": proxy_cpu_s,
        "proxy_cpu_pct": 100.0 * proxy_cpu_s / dt,
        "client_procs_cpu_pct": 100.0 * (b.client_ticks - a.client_ticks) / CLK_TCK / dt,
        "other_procs_cpu_pct": 100.0 * other_ticks(a, b) / CLK_TCK / dt,
        "proxy_core_busy_pct": busy(proxy_cpu),
        "client_cpu_busy_pct": busy(client_cpu),
    }


# ------------------------------------------------------------------------------------ processes


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """Pin the child to one CPU, and have the kernel stop it if this driver dies."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_tree(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the root, wait, then SIGTERM/SIGKILL whatever of its tree is left, by PID.

    A PID is only signalled while its start time still matches, so a recycled PID is never hit."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid, start in tree[1:] if still_running(pid, start)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid, start in tree[1:] if still_running(pid, start)]
        if not left:
            return


def wait_listening(t: Target, timeout: float) -> None:
    assert t.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise BenchError(
                f"{t.name} exited with status {t.proc.returncode} at start-up\n{t.diagnostics()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", t.port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{t.name} did not listen on port {t.port} within {timeout:.0f} s\n{t.diagnostics()}"
    )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# ------------------------------------------------------------------------------------ targets


@dataclass
class Target:
    """One proxy under test: how to configure, start and find it."""

    name: str
    command: list[str] = field(default_factory=list)
    config_text: str = ""
    access_log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None  # the proxy's stdout and stderr
    callgrind_out: Path | None = None  # prefix of callgrind's files, when run under it
    diag_log: Path | None = None  # where it explains a failure (Squid: cache.log)

    def diagnostics(self) -> str:
        """The last lines of what the proxy said, for an error message."""
        logs = [p for p in (self.log, self.diag_log) if p is not None]
        return "\n".join(f"--- {p}:\n{tail(p)}" for p in logs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Bench:
    """Owns the run folder, the origin and the proxy instances of one benchmark run."""

    def __init__(self, settings: Settings, rundir: Path) -> None:
        self.s = settings
        self.rundir = rundir
        self.bin = Path(os.environ.get("BENCH_BIN", BENCH_DIR / "bin"))
        self.origin: subprocess.Popen[bytes] | None = None
        self.origin_port = 0
        self.instances = 0
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.raw: list[JsonDict] = []
        self.warnings: list[str] = []
        self.policy_check: dict[str, JsonDict] = {}
        self.access_log_lines: dict[str, list[int]] = {}
        self.targets: dict[str, JsonDict] = {}
        self.noise: list[float] = []  # other processes' CPU % during each measurement
        if settings.unpinned:
            self.warn("--unpinned: the proxy, the load generator and the origin share every CPU")
        elif settings.proxy_cpu is None:
            self.warn("one CPU only: nothing is pinned, and the proxy shares it with the client")
        self.idle_tunnels = min(settings.idle_tunnels, (self.nofile - 300) // 2)
        if self.idle_tunnels < settings.idle_tunnels:
            self.warn(
                f"idle: {self.idle_tunnels} tunnels, not {settings.idle_tunnels}: the "
                f"open-file limit {self.nofile} allows 2 descriptors per tunnel"
            )

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"  note: {text}", flush=True)

    # ---- origin

    def start_origin(self, lifetime: float) -> None:
        with (self.rundir / "origin.log").open("wb") as log:
            self.origin = subprocess.Popen(
                [str(self.bin / "origin"), "--port", "0", "--lifetime", str(int(lifetime))],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(self.s.client_cpu),
            )
        assert self.origin.stdout is not None
        ready = selectors.DefaultSelector()
        ready.register(self.origin.stdout, selectors.EVENT_READ)
        if not ready.select(timeout=10):
            raise BenchError("the origin did not report its port")
        line = self.origin.stdout.readline().decode()
        if not line.startswith("port "):
            raise BenchError(f"the origin failed to start: {line!r}")
        self.origin_port = int(line.split()[1])

    # ---- proxies

    def make_target(self, name: str) -> Target:
        """Write a fresh config for one instance; the command line is recorded for the JSON."""
        self.instances += 1
        n = self.instances
        port = free_port()
        t = Target(name=name, port=port, log=self.rundir / f"{name}-{n}.log")
        access_log = self.rundir / f"{name}-{n}-access.log"
        cache_log = self.rundir / f"{name}-{n}-cache.log"
        fields: dict[str, str | int] = {
            "port": port,
            "origin_port": self.origin_port,
            "rundir": str(self.rundir),
            "max_fds": self.nofile,
            "max_connections": (self.nofile - 200) // 2,
            "access_log": str(access_log),
            "cache_log": str(cache_log),
        }
        workers = WORKERS_NAME.fullmatch(name)
        if name == "connectproxy" or workers:
            t.access_log = access_log
            fields["metrics_port"] = free_port()
            t.config_text = template("connectproxy.yaml", fields)
            conf = self.rundir / f"{name}-{n}.yaml"
            conf.write_text(t.config_text)
            t.command = [self.s.connectproxy, "run", "--config", str(conf)]
            count = workers.group(1) if workers else self.s.workers
            if count is not None:
                t.command += ["--workers", str(count)]
        elif name == "squid":
            t.access_log = access_log
            t.diag_log = cache_log
            t.config_text = template("squid.conf", fields)
            conf = self.rundir / f"squid-{n}.conf"
            conf.write_text(t.config_text)
            # --foreground keeps the production process shape (master, kid, log daemon):
            # what a systemd-started Squid runs.
            t.command = [self.s.squid, "--foreground", "-f", str(conf)]
        else:
            t.port = self.origin_port
        self.targets.setdefault(name, {"command": t.command, "config": t.config_text})
        return t

    def start(self, name: str, callgrind: bool = False) -> Target:
        """Start one proxy instance; with `callgrind`, under valgrind with counting switched
        off until `scenario_instructions` switches it on."""
        t = self.make_target(name)
        if name == "direct":
            return t
        assert t.log is not None
        command = t.command
        if callgrind:
            t.callgrind_out = self.rundir / f"{name}-{self.instances}.callgrind"
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={t.callgrind_out}.%p",
                *command,
            ]
        with t.log.open("wb") as log:
            t.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(self.s.proxy_cpu),
                cwd=self.rundir,
            )
        try:
            wait_listening(t, timeout=300 if callgrind else 30)
            self.check_policy(t)
        except BaseException:
            self.stop(t)
            raise
        return t

    def stop(self, t: Target) -> None:
        if t.proc is None:
            return
        exited_early = t.proc.poll() is not None  # start() has already said why
        stop_tree(t.proc)
        if t.access_log is not None:
            self.access_log_lines.setdefault(t.name, []).append(count_lines(t.access_log))
        if not exited_early and t.proc.returncode not in (0, -signal.SIGTERM):
            self.warn(f"{t.name} exited with status {t.proc.returncode} on SIGTERM (log: {t.log})")
        t.proc = None

    def check_policy(self, t: Target) -> None:
        """Both proxies must enforce the same policy, or the comparison is not like for like."""
        checks = {
            "allowed": f"{TARGET_HOST}:{self.origin_port}",
            "denied_domain": f"{DENIED_HOST}:{self.origin_port}",
            "denied_port": f"{TARGET_HOST}:{self.origin_port % 65535 + 1}",
        }
        expected = {"allowed": 200, "denied_domain": 403, "denied_port": 403}
        result = {key: connect_status(t.port, target) for key, target in checks.items()}
        if result["allowed"] != 200:
            raise BenchError(
                f"{t.name}: CONNECT {checks['allowed']} answered {result['allowed']},"
                f" not 200\n{t.diagnostics()}"
            )
        if result != expected and t.name not in self.policy_check:
            self.warn(f"{t.name}: policy check {result}, expected {expected}")
        self.policy_check.setdefault(t.name, result)

    # ---- the load generator

    def loadgen(
        self,
        t: Target,
        mode: str,
        args: list[str],
        timeout: float,
        on_barrier: Callable[[str, int], None] | None = None,
    ) -> JsonDict:
        argv = [str(self.bin / "loadgen"), mode, "--proxy", f"127.0.0.1:{t.port}"]
        argv += (
            ["--direct"]
            if t.name == "direct"
            else ["--target", f"{TARGET_HOST}:{self.origin_port}"]
        )
        argv += args + (["--barrier"] if on_barrier else [])
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_child_setup(self.s.client_cpu),
        )
        assert proc.stdin is not None and proc.stdout is not None
        out = b""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            finished = False
            while not finished and time.monotonic() < deadline:
                if not sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                finished = not chunk  # EOF: the load generator is done
                out += chunk
                while on_barrier and (m := re.search(rb"^@(\w+)\n", out, re.M)):
                    on_barrier(m.group(1).decode(), proc.pid)
                    out = out[: m.start()] + out[m.end() :]
                    with contextlib.suppress(BrokenPipeError):  # its exit status will say why
                        proc.stdin.write(b"\n")
                        proc.stdin.flush()
            if not finished:
                raise BenchError(f"loadgen {mode} did not finish within {timeout:.0f} s")
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sel.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise BenchError(f"loadgen {mode} failed ({proc.returncode}): {stderr.strip()}")
        try:
            result: JsonDict = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"loadgen {mode} printed no result: {out[-300:]!r}") from None
        return result

    def measured(
        self, t: Target, mode: str, args: list[str], timeout: float, edges: tuple[str, str]
    ) -> tuple[JsonDict, JsonDict]:
        """Run the load generator and sample CPU at its two barriers `edges`."""
        assert self.origin is not None
        origin_pid = self.origin.pid
        snaps: dict[str, Snapshot] = {}

        def on_barrier(name: str, loadgen_pid: int) -> None:
            if name in edges:
                snaps[name] = Snapshot.take(t.pid, [origin_pid, loadgen_pid])

        result = self.loadgen(t, mode, args, timeout, on_barrier)
        if set(snaps) != set(edges):  # a failed set-up skips the transfer and its barriers
            return result, {}
        return result, interval(
            snaps[edges[0]], snaps[edges[1]], self.s.proxy_cpu, self.s.client_cpu
        )

    def warm_up(self, t: Target) -> None:
        n = self.s.warmup
        result = self.loadgen(
            t, "rate", ["-c", "8", "--max-exchanges", str(n), "--duration", "60"], timeout=90
        )
        if result["error_total"] or result["completed"] != n:
            raise BenchError(
                f"{t.name}: warm-up failed: {result['completed']}/{n} exchanges "
                f"completed; first error: {result['first_error'] or '-'}\n"
                f"{t.diagnostics()}"
            )

    # ---- scenarios

    def scenario_rate(self, t: Target, rnd: int) -> JsonDict:
        s = self.s
        args = ["-c", str(s.concurrency), "--duration", str(s.duration)]
        res, cpu = self.measured(t, "rate", args, s.duration + 60, ("start", "done"))
        self.raw.append({"round": rnd, "proxy": t.name, "step": "rate", "loadgen": res, "cpu": cpu})
        if res["oldest_in_flight_ms"] > 1000:
            age = res["oldest_in_flight_ms"]
            self.warn(
                f"{t.name} rate: an exchange was in flight for {age:.0f} ms when the run "
                "ended (dropped, not counted as failed)"
            )
        m: JsonDict = {
            "rate.tunnels_per_s": res["rate"],
            "rate.connect_p50_us": res["connect_us"]["p50"],
            "rate.connect_p99_us": res["connect_us"]["p99"],
            "rate.handshake_p50_us": res["handshake_us"]["p50"],
            "rate.handshake_p99_us": res["handshake_us"]["p99"],
            "rate.exchange_p50_us": res["exchange_us"]["p50"],
            "rate.exchange_p99_us": res["exchange_us"]["p99"],
            "rate.client_cpu_busy_pct": cpu.get("client_cpu_busy_pct"),
            "rate.client_procs_cpu_pct": cpu.get("client_procs_cpu_pct"),
            "rate.other_procs_cpu_pct": cpu.get("other_procs_cpu_pct"),
            "rate.failed": res["error_total"],
        }
        if t.proc is not None and cpu:
            m["rate.proxy_cpu_pct"] = cpu["proxy_cpu_pct"]
            m["rate.proxy_core_busy_pct"] = cpu["proxy_core_busy_pct"]
            m["rate.proxy_cpu_us_per_tunnel"] = (
                1e6 * cpu["proxy_cpu_s"] / res["completed"] if res["completed"] else None
            )
        self.check_client(t, "rate", cpu)
        if res["error_total"]:
            self.warn(f"{t.name} rate: {res['error_total']} failed; first: {res['first_error']}")

        args = ["-c", "1", "--duration", str(s.lat_duration)]
        res = self.loadgen(t, "rate", args, s.lat_duration + 60)
        self.raw.append({"round": rnd, "proxy": t.name, "step": "latency", "loadgen": res})
        if res["error_total"]:
            self.warn(f"{t.name} C=1: {res['error_total']} failed; first: {res['first_error']}")
        m |= {
            "latency.tunnels_per_s": res["rate"],
            "latency.handshake_p50_us": res["handshake_us"]["p50"],
            "latency.handshake_p99_us": res["handshake_us"]["p99"],
            "latency.exchange_p50_us": res["exchange_us"]["p50"],
            "latency.failed": res["error_total"],
        }
        return m

    def scenario_throughput(self, t: Target, rnd: int) -> JsonDict:
        s = self.s
        m: JsonDict = {}
        for direction, tunnels in TRANSFERS:
            key = f"{direction}{tunnels}"
            args = [
                "--tunnels",
                str(tunnels),
                "--bytes",
                str(s.bytes),
                "--max-seconds",
                str(s.max_seconds),
            ]
            res, cpu = self.measured(t, direction, args, s.max_seconds + 60, ("ready", "done"))
            self.raw.append(
                {"round": rnd, "proxy": t.name, "step": key, "loadgen": res, "cpu": cpu}
            )
            gb = res["bytes"] / 1e9
            m[f"{key}.gb_per_s"] = res["gbps"]
            if t.proc is not None and cpu:
                m[f"{key}.proxy_cpu_s_per_gb"] = cpu["proxy_cpu_s"] / gb if gb else None
                m[f"{key}.proxy_cpu_pct"] = cpu["proxy_cpu_pct"]
                m[f"{key}.proxy_core_busy_pct"] = cpu["proxy_core_busy_pct"]
            m[f"{key}.client_cpu_busy_pct"] = cpu.get("client_cpu_busy_pct")
            m[f"{key}.other_procs_cpu_pct"] = cpu.get("other_procs_cpu_pct")
            m[f"{key}.capped"] = res["capped"]
            m[f"{key}.failed"] = res["failed_tunnels"]
            if res["error_total"]:
                self.warn(f"{t.name} {key}: {res['first_error']}")
            self.check_client(t, key, cpu)
        return m

    def scenario_idle(self, t: Target, rnd: int) -> JsonDict:
        s = self.s
        time.sleep(0.5)  # let the warm-up's closing connections settle out of the proxy
        before = tree_rss_kib(t.pid) if t.pid else (0, 0)
        held: list[tuple[int, int]] = []

        def on_barrier(name: str, loadgen_pid: int) -> None:
            if name == "held" and t.pid:
                held.append(tree_rss_kib(t.pid))

        n = self.idle_tunnels
        args = [
            "--tunnels",
            str(n),
            "--open-concurrency",
            str(s.open_concurrency),
            "--hold",
            str(s.idle_hold),
            "--echo-timeout",
            str(s.echo_timeout),
        ]
        timeout = 10 + n / 100 + s.idle_hold + s.echo_timeout + 60
        res = self.loadgen(t, "idle", args, timeout, on_barrier)
        self.raw.append(
            {
                "round": rnd,
                "proxy": t.name,
                "step": "idle",
                "loadgen": res,
                "rss_before_kib": before,
                "rss_held_kib": held,
            }
        )
        m: JsonDict = {
            "idle.opens_per_s": res["opens_per_s"],
            "idle.failed": res["failed"],
            "idle.open_failures": res["open_failures"],
            "idle.closed_while_held": res["closed_while_held"],
            "idle.echo_failures": res["echo_failures"],
        }
        if t.pid and held and res["opened"]:
            m["idle.kib_per_tunnel"] = (held[0][0] - before[0]) / res["opened"]
            m["idle.rss_before_mib"] = before[0] / 1024
            m["idle.rss_held_mib"] = held[0][0] / 1024
            m["idle.processes"] = held[0][1]
        if res["error_total"]:
            self.warn(f"{t.name} idle: {res['first_error']}")
        return m

    def scenario_instructions(self, t: Target, rnd: int) -> JsonDict:
        """User-space instructions per tunnel of the rate exchange, counted by callgrind in the
        one connectproxy process (parse_args refuses Squid and --workers). Unlike CPU time, the
        count is the same on a quiet or a busy machine and from one hour to the next, so one run
        judges a change to the set-up path. Kernel work (system calls, TCP) is not counted."""
        s = self.s
        assert t.pid is not None and t.callgrind_out is not None
        pid = str(t.pid)
        callgrind_control("-i", "on", pid)
        args = ["-c", "4", "--duration", str(s.duration)]
        res = self.loadgen(t, "rate", args, s.duration + 120)
        callgrind_control("-i", "off", pid)
        callgrind_control("-d", pid)  # returns once the dump is written
        self.raw.append({"round": rnd, "proxy": t.name, "step": "instructions", "loadgen": res})
        total = sum(
            callgrind_total(path)
            for path in t.callgrind_out.parent.glob(f"{t.callgrind_out.name}.*")
        )
        if res["error_total"]:
            self.warn(f"{t.name} instructions: {res['error_total']} failed; {res['first_error']}")
        return {
            "instructions.per_tunnel": total / res["completed"] if res["completed"] else None,
            "instructions.tunnels": res["completed"],
            "instructions.failed": res["error_total"],
        }

    def scenario_syscalls(self, t: Target, rnd: int) -> JsonDict:
        """System calls per tunnel of the rate exchange, counted by `strace -c` over every
        process of the proxy (Squid's too). Like the instruction count, the same figure from one
        hour to the next; it covers what the instruction count leaves out, the kernel's side."""
        s = self.s
        assert t.pid is not None
        summary = self.rundir / f"{t.name}-{self.instances}.strace"
        argv = ["strace", "-c", "-f", "-o", str(summary)]
        for pid, _ in process_tree(t.pid):
            argv += ["-p", str(pid)]
        tracer = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(1.0)  # attached: strace stops each process and then lets it go on
            args = ["-c", str(s.concurrency), "--duration", str(s.duration)]
            res = self.loadgen(t, "rate", args, s.duration + 120)
        finally:
            tracer.send_signal(signal.SIGINT)  # detach; strace writes its table on the way out
            tracer.wait(timeout=60)
        calls = strace_calls(summary.read_text() if summary.exists() else "")
        self.raw.append(
            {"round": rnd, "proxy": t.name, "step": "syscalls", "loadgen": res, "calls": calls}
        )
        done = res["completed"]
        if res["error_total"]:
            self.warn(f"{t.name} syscalls: {res['error_total']} failed; {res['first_error']}")
        return {
            "syscalls.per_tunnel": sum(calls.values()) / done if done and calls else None,
            "syscalls.tunnels": done,
            "syscalls.failed": res["error_total"],
        }

    def check_client(self, t: Target, step: str, cpu: JsonDict) -> None:
        """Say when a figure may not measure the proxy: a saturated client, or a noisy machine."""
        busy = cpu.get("client_cpu_busy_pct")
        if t.name != "direct" and busy is not None and busy > 95:
            self.warn(
                f"{t.name} {step}: the client CPU was {busy:.0f}% busy, so this figure "
                "is a lower bound of what the proxy can do"
            )
        other = cpu.get("other_procs_cpu_pct")
        if other is not None:
            self.noise.append(other)

    def summarize_noise(self) -> None:
        """One note for the whole run: on a shared machine a note per measurement is clutter."""
        noisy = [x for x in self.noise if x > 10]
        if noisy:
            self.warn(
                f"processes outside the benchmark used over 10% of a core during {len(noisy)} of "
                f"{len(self.noise)} measurements (up to {max(noisy):.0f}%, median "
                f"{statistics.median(self.noise):.0f}%): the machine is shared, so compare the "
                "proxies within this run (see the 'other processes CPU %' rows)"
            )

    def run_scenario(self, name: str, scenario: str, rnd: int) -> JsonDict:
        t = self.start(name, callgrind=scenario == INSTRUCTIONS)
        try:
            self.warm_up(t)
            method = getattr(self, f"scenario_{scenario}")
            metrics: JsonDict = method(t, rnd)
            return metrics
        finally:
            self.stop(t)


def callgrind_control(*args: str) -> None:
    done = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stderr.strip()}")


def callgrind_total(path: Path) -> int:
    """The instruction total of one callgrind output file (0 for a process that counted none).
    The `totals:` line at the end is the one to trust: in a dump requested while the program
    runs, the `summary:` line near the top says 0."""
    text = path.read_text(errors="replace")
    found = re.findall(r"^totals: (\d+)", text, re.M) or re.findall(r"^summary: (\d+)", text, re.M)
    return int(found[-1]) if found else 0


def strace_calls(table: str) -> dict[str, int]:
    """Calls per system call from `strace -c`'s table (rows end with the call's name; the
    calls column is the fourth)."""
    calls: dict[str, int] = {}
    for line in table.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[-1] != "total" and cols[3].isdigit():
            calls[cols[-1]] = calls.get(cols[-1], 0) + int(cols[3])
    return calls


def template(name: str, fields: dict[str, str | int]) -> str:
    return Template((BENCH_DIR / "templates" / name).read_text()).substitute(fields)


def connect_status(port: int, target: str) -> int:
    """Send one CONNECT and return the status code (0 if there was no HTTP answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return 0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0


# ------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    # "higher" or "lower" is better; "info" gives context (is the client or the machine the
    # limit?); "zero" marks failure counts, summed over rounds rather than medians.
    better: str


def metric_table() -> list[Metric]:
    rows = [
        Metric("rate.tunnels_per_s", "rate: tunnels/s (C clients)", "higher"),
        Metric("rate.connect_p50_us", "rate: TCP connect p50 us", "lower"),
        Metric("rate.connect_p99_us", "rate: TCP connect p99 us", "lower"),
        Metric("rate.handshake_p50_us", "rate: CONNECT->200 p50 us", "lower"),
        Metric("rate.handshake_p99_us", "rate: CONNECT->200 p99 us", "lower"),
        Metric("rate.exchange_p50_us", "rate: exchange p50 us", "lower"),
        Metric("rate.exchange_p99_us", "rate: exchange p99 us", "lower"),
        Metric("rate.proxy_cpu_pct", "rate: proxy CPU %", "info"),
        Metric("rate.proxy_cpu_us_per_tunnel", "rate: proxy CPU us/tunnel", "lower"),
        Metric("rate.proxy_core_busy_pct", "rate: proxy's core busy %", "info"),
        Metric("rate.client_cpu_busy_pct", "rate: client CPU busy %", "info"),
        Metric("rate.client_procs_cpu_pct", "rate: loadgen+origin CPU %", "info"),
        Metric("rate.other_procs_cpu_pct", "rate: other processes CPU %", "info"),
        Metric("rate.failed", "rate: failed exchanges", "zero"),
        Metric("latency.tunnels_per_s", "C=1: tunnels/s", "higher"),
        Metric("latency.handshake_p50_us", "C=1: CONNECT->200 p50 us", "lower"),
        Metric("latency.handshake_p99_us", "C=1: CONNECT->200 p99 us", "lower"),
        Metric("latency.exchange_p50_us", "C=1: exchange p50 us", "lower"),
        Metric("latency.failed", "C=1: failed exchanges", "zero"),
    ]
    for direction, tunnels in TRANSFERS:
        key, name = f"{direction}{tunnels}", f"{direction} T={tunnels}"
        rows += [
            Metric(f"{key}.gb_per_s", f"{name}: GB/s", "higher"),
            Metric(f"{key}.proxy_cpu_s_per_gb", f"{name}: proxy CPU s/GB", "lower"),
            Metric(f"{key}.proxy_cpu_pct", f"{name}: proxy CPU %", "info"),
            Metric(f"{key}.proxy_core_busy_pct", f"{name}: proxy's core busy %", "info"),
            Metric(f"{key}.client_cpu_busy_pct", f"{name}: client CPU busy %", "info"),
            Metric(f"{key}.other_procs_cpu_pct", f"{name}: other processes CPU %", "info"),
            Metric(f"{key}.capped", f"{name}: time-capped runs", "zero"),
            Metric(f"{key}.failed", f"{name}: failed tunnels", "zero"),
        ]
    rows += [
        Metric("idle.kib_per_tunnel", "idle: proxy KiB/tunnel", "lower"),
        Metric("idle.rss_before_mib", "idle: proxy RSS before MiB", "lower"),
        Metric("idle.rss_held_mib", "idle: proxy RSS held MiB", "lower"),
        Metric("idle.processes", "idle: proxy processes", "info"),
        Metric("idle.opens_per_s", "idle: opens/s", "higher"),
        Metric("idle.failed", "idle: failed tunnels", "zero"),
        Metric("idle.open_failures", "idle:  open failures", "zero"),
        Metric("idle.closed_while_held", "idle:  closed while held", "zero"),
        Metric("idle.echo_failures", "idle:  echo failures", "zero"),
        Metric("instructions.per_tunnel", "instructions: user-space instructions/tunnel", "lower"),
        Metric("instructions.tunnels", "instructions: tunnels counted", "info"),
        Metric("instructions.failed", "instructions: failed exchanges", "zero"),
        Metric("syscalls.per_tunnel", "syscalls: system calls/tunnel", "lower"),
        Metric("syscalls.tunnels", "syscalls: tunnels counted", "info"),
        Metric("syscalls.failed", "syscalls: failed exchanges", "zero"),
    ]
    return rows


FAILURE_KEYS = (
    "rate.failed",
    "latency.failed",
    *(f"{d}{n}.failed" for d, n in TRANSFERS),
    "idle.failed",
    "instructions.failed",
    "syscalls.failed",
)


def summarize(rounds: list[JsonDict], proxies: Sequence[str]) -> JsonDict:
    """Per proxy and metric: median/min/max over rounds (sum for failure counts)."""
    summary: JsonDict = {}
    for proxy in proxies:
        per: JsonDict = {}
        for metric in metric_table():
            values = [
                r["metrics"][metric.key]
                for r in rounds
                if r["proxy"] == proxy and r["metrics"].get(metric.key) is not None
            ]
            if not values:
                continue
            if metric.better == "zero":
                per[metric.key] = {"sum": sum(values), "values": values}
            else:
                per[metric.key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "values": values,
                }
        summary[proxy] = per
    return summary


def ratios(summary: JsonDict, candidate: str, reference: str) -> JsonDict:
    out: JsonDict = {}
    for metric in metric_table():
        a = summary.get(candidate, {}).get(metric.key, {}).get("median")
        b = summary.get(reference, {}).get(metric.key, {}).get("median")
        if a is not None and b:
            out[metric.key] = a / b
    return out


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(
    summary: JsonDict, proxies: Sequence[str], ratio: JsonDict, pair: tuple[str, str] | None
) -> str:
    head = ["metric", *proxies] + ([f"{pair[0]}/{pair[1]}", "better"] if pair else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    arrows = {"higher": "higher", "lower": "lower", "zero": "0", "info": ""}
    for metric in metric_table():
        cells = []
        for proxy in proxies:
            entry = summary.get(proxy, {}).get(metric.key)
            if entry is None:
                cells.append("-")
            elif metric.better == "zero":
                cells.append(str(entry["sum"]))
            else:
                med = entry["median"]
                spread = (entry["max"] - entry["min"]) / 2 / med * 100 if med else 0
                cells.append(fmt(med) + (f" ±{spread:.0f}%" if len(entry["values"]) > 1 else ""))
        if all(c == "-" for c in cells):
            continue
        row = [metric.label, *cells]
        if pair:
            r = ratio.get(metric.key)
            row += [f"{r:.2f}" if r is not None else "-", arrows[metric.better]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ run


def environment(s: Settings) -> JsonDict:
    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    cp_python = Path(s.connectproxy).parent / "python"
    env: JsonDict = {
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "python_driver": platform.python_version(),
        "gcc": cmd(["gcc", "--version"]),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "somaxconn": read_sysctl(Path("/proc/sys/net/core/somaxconn")),
        "tcp_congestion_control": read_sysctl(CC_SYSCTL),
        "default_qdisc": read_sysctl(Path("/proc/sys/net/core/default_qdisc")),
        "tcp_tw_reuse": read_sysctl(Path("/proc/sys/net/ipv4/tcp_tw_reuse")),
        "git_commit": cmd(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"]),
        "git_dirty": bool(
            subprocess.run(
                ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        ),
    }
    if "squid" in s.proxies:
        env["squid"] = cmd([s.squid, "-v"])
    if any(n.startswith("connectproxy") for n in s.proxies) and cp_python.exists():
        env["connectproxy_python"] = cmd(
            [
                str(cp_python),
                "-c",
                "import sys, uvloop; print(sys.version.split()[0], 'uvloop', uvloop.__version__)",
            ]
        )
        # Compiled or plain Python (setup.py): the two differ in speed only, so say which ran.
        env["connectproxy"] = cmd([s.connectproxy, "--version"])
    return env


def build(bin_dir: Path) -> None:
    """Compile the C tools when a binary is missing or older than its source."""
    stale = any(
        not (bin_dir / prog).exists()
        or (bin_dir / prog).stat().st_mtime < (BENCH_DIR / f"{prog}.c").stat().st_mtime
        for prog in ("origin", "loadgen")
    )
    if stale:
        env = dict(os.environ, BENCH_BIN=str(bin_dir))
        done = subprocess.run(
            ["sh", str(BENCH_DIR / "build.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"build.sh failed:\n{done.stderr}")


def estimate_seconds(s: Settings, idle_tunnels: int) -> float:
    per_start = 4.0  # start, policy check, warm-up, stop
    each = {
        "rate": s.duration + s.lat_duration,
        "throughput": 4 * min(s.max_seconds, 4.0),
        "idle": idle_tunnels / 2000 + s.idle_hold + 1,
        INSTRUCTIONS: s.duration + 60,  # and start-up under valgrind
        SYSCALLS: s.duration + 2,
    }
    total = sum(each[sc] + per_start for sc in s.scenarios)
    return total * len(s.proxies) * s.rounds


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP become KeyboardInterrupt, so every `finally` stops its processes."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run(s: Settings) -> tuple[JsonDict, int]:
    with congestion_control(s.congestion_control):
        return run_with(s, environment(s))


def run_with(s: Settings, env: JsonDict) -> tuple[JsonDict, int]:
    """The run itself; `env` is the machine as it was at the start (environment())."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    if s.client_cpu is not None:
        os.sched_setaffinity(0, {s.client_cpu})  # the driver keeps off the proxy's CPU
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)  # see still_running()
    bin_dir = Path(os.environ.get("BENCH_BIN", BENCH_DIR / "bin"))
    build(bin_dir)

    rundir = Path(tempfile.mkdtemp(prefix="cpbench-"))
    os.chmod(rundir, 0o777)  # Squid drops to user `proxy` and writes its logs here
    (rundir / "hosts").write_text(f"127.0.0.1 {TARGET_HOST} {DENIED_HOST}\n")
    os.chmod(rundir / "hosts", 0o644)
    bench = Bench(s, rundir)
    started = datetime.now(UTC)
    eta = estimate_seconds(s, bench.idle_tunnels)
    print(
        f"proxies {', '.join(s.proxies)}; scenarios {', '.join(s.scenarios)}; {s.rounds} "
        f"round(s); TCP congestion control {env['tcp_congestion_control']}; about "
        f"{eta / 60:.1f} min; run folder {rundir}",
        flush=True,
    )
    rounds: list[JsonDict] = []
    error: str | None = None
    try:
        bench.start_origin(lifetime=eta * 3 + 600)
        for rnd in range(1, s.rounds + 1):
            # Alternate the order each round so slow drift of the machine hits both alike.
            order = list(s.proxies) if rnd % 2 else list(reversed(s.proxies))
            merged: dict[str, JsonDict] = {p: {} for p in order}
            for scenario in s.scenarios:
                for name in order:
                    t0 = time.monotonic()
                    merged[name] |= bench.run_scenario(name, scenario, rnd)
                    print(
                        f"  round {rnd} {scenario:<10} {name:<12} "
                        f"{time.monotonic() - t0:5.1f} s  {headline(scenario, merged[name])}",
                        flush=True,
                    )
            rounds += [{"round": rnd, "proxy": p, "metrics": merged[p]} for p in order]
    except BenchError as exc:
        error = str(exc)  # reported with the table, after the partial results are saved
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        bench.summarize_noise()
        if bench.origin is not None:
            stop_tree(bench.origin, grace=5)
        if not s.keep_rundir:
            shutil.rmtree(rundir, ignore_errors=True)

    summary = summarize(rounds, s.proxies)
    pair = comparison(s.proxies)
    ratio = ratios(summary, *pair) if pair else {}
    failures = {
        p: sum(summary[p].get(k, {}).get("sum", 0) for k in FAILURE_KEYS) for p in s.proxies
    }
    table = markdown(summary, s.proxies, ratio, pair)
    missing = [p for p in s.proxies if not any(r["proxy"] == p for r in rounds)]
    result: JsonDict = {
        "format": "connectproxy-bench/1",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()},
        "environment": env,
        "error": error,
        "failures": failures,
        "summary": summary,
        "ratios": {"candidate": pair[0], "reference": pair[1], "values": ratio} if pair else None,
        "rounds": rounds,
        "policy_check": bench.policy_check,
        "access_log_lines_per_instance": bench.access_log_lines,
        "targets": bench.targets,
        "warnings": bench.warnings,
        "table_markdown": table,
        "rundir": str(rundir),  # removed after the run unless --keep-rundir
        "raw": bench.raw,
    }
    status = 1 if error or missing or any(failures.values()) else 0
    return result, status


def comparison(proxies: Sequence[str]) -> tuple[str, str] | None:
    """Which two targets the ratio column compares: the candidate against Squid, or else the
    most workers against the fewest (a scaling run)."""
    if "squid" in proxies:
        return next(((c, "squid") for c in proxies if c != "squid"), None)
    scaled = sorted(
        (int(m.group(1)), name) for name in proxies if (m := WORKERS_NAME.fullmatch(name))
    )
    if len(scaled) >= 2:
        return scaled[-1][1], scaled[0][1]
    return None


def headline(scenario: str, m: JsonDict) -> str:
    """One progress line per scenario, so a long run shows it is alive and sane."""
    if scenario == "rate":
        return (
            f"{m['rate.tunnels_per_s']:,.0f} tunnels/s, C=1 CONNECT->200 p50 "
            f"{m['latency.handshake_p50_us']:.0f} us, failed {m['rate.failed']}"
            f"+{m['latency.failed']}"
        )
    if scenario == "throughput":
        return ", ".join(f"{d}{n} {m[f'{d}{n}.gb_per_s']:.2f}" for d, n in TRANSFERS) + " GB/s"
    if scenario == SYSCALLS:
        per = m["syscalls.per_tunnel"]
        return (f"{per:.1f} system calls/tunnel, " if per else "") + (
            f"failed {m['syscalls.failed']}"
        )
    if scenario == INSTRUCTIONS:
        per = m["instructions.per_tunnel"]
        return (f"{per:,.0f} instructions/tunnel, " if per else "") + (
            f"failed {m['instructions.failed']}"
        )
    kib = m.get("idle.kib_per_tunnel")
    return (f"{kib:.1f} KiB/tunnel, " if kib is not None else "") + f"failed {m['idle.failed']}"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    with terminate_on_signals():
        try:
            result, status = run(settings)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    out = settings.out
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        scenario = "all" if len(settings.scenarios) > 1 else settings.scenarios[0]
        out = BENCH_DIR / "results" / f"{'-vs-'.join(settings.proxies)}-{scenario}-{stamp}.json"
    # The file first: a closed stdout (| head) must not lose a run.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(result["table_markdown"])
    print(f"TCP congestion control: {result['environment']['tcp_congestion_control']}")
    for note in result["warnings"]:
        print(f"note: {note}")
    for proxy, count in result["failures"].items():
        if count:
            print(f"FAILED: {proxy}: {count} failed tunnels or exchanges (see 'raw' in the JSON)")
    if result["error"]:
        print(f"error: {result['error']}", file=sys.stderr)
    print(f"results: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
