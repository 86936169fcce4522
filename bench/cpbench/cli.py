"""The command line: flags checked into Settings, and the run's result file and table out.

A mistake on the command line is an argparse error (exit status 2) naming the flag; a failed run
is "error: ..." and exit status 1, never a traceback. The result file is written before anything
is printed, so a closed stdout cannot lose a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from .driver import run
from .environment import CC_AVAILABLE, CC_SYSCTL, read_sysctl
from .processes import terminate_on_signals
from .settings import (
    BENCH_DIR,
    INSTRUCTIONS,
    KNOWN_PROXIES,
    LARGE,
    SCENARIOS,
    SYSCALLS,
    TLS_GUARD,
    WORKERS_NAME,
    BenchError,
    Settings,
)

# The targets `--scenario instructions` can count: one connectproxy process each.
SINGLE_PROCESS = ("connectproxy", LARGE, TLS_GUARD)


def parse_size(text: str) -> int:
    """'4G', '512M', '1e9' or a plain count of bytes (binary units: G = 2**30)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGkmg]?)i?[Bb]?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4G, 512M or 1000000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def parse_args(argv: Sequence[str] | None) -> Settings:
    """The command line as Settings; what cannot work on this machine is refused up front."""
    # The connectproxy installed beside the Python that runs the benchmark: `make bench` runs the
    # compiled build's venv, and the plain-Python venv's python measures that build.
    default_cp = Path(sys.executable).parent / "connectproxy"
    p = argparse.ArgumentParser(
        description="Benchmark connectproxy against Squid on loopback (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--proxies",
        default=None,
        help="comma-separated, from: connectproxy, squid, direct (no proxy: the "
        "harness's own limit), connectproxy-wN (connectproxy --workers N), connectproxy-large "
        "(10,000 domain patterns), connectproxy-tls (the TLS guard, tls: verify_sni; implies "
        "--client-hello). Default: connectproxy and, if installed, squid",
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
        "--client-hello",
        action="store_true",
        help="every tunnel of every proxy starts with a real TLS ClientHello for the target "
        "name (Python's ssl, recorded at the start of the run), as a TLS client's does",
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
    if any(n in ("connectproxy", LARGE, TLS_GUARD) or WORKERS_NAME.fullmatch(n) for n in names):
        if shutil.which(a.connectproxy) is None:
            p.error(
                f"--connectproxy: {a.connectproxy} is not an executable (use --connectproxy PATH)"
            )
        if os.sep in a.connectproxy:
            # Proxies start in the run folder: a path relative to here would not be found there.
            a.connectproxy = os.path.abspath(a.connectproxy)
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be at least 1")
    if a.quick:
        # A --duration given with --quick is kept (the smoke test counts instructions for longer).
        if a.duration == p.get_default("duration"):
            a.duration = 1.0
        a.rounds, a.lat_duration, a.warmup = 1, 0.5, 100
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
        if len(names) != 1 or names[0] not in SINGLE_PROCESS or a.workers is not None:
            # A process that sleeps (Squid's master in waitpid, our supervisor with --workers)
            # never takes callgrind's command to start counting: only a single connectproxy
            # process can be measured this way (on the small, the large or the guarded config).
            p.error(
                "--scenario instructions measures one connectproxy process (no --workers): "
                f"give --proxies one of {', '.join(SINGLE_PROCESS)}"
            )
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
        client_hello=a.client_hello or TLS_GUARD in names,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """bench/run.py: run, save the result file, print the table; the exit status."""
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
