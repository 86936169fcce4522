"""One whole run: the machine set up, the rounds in alternating order, and the result.

Each round runs every scenario on every proxy in turn, reversing the proxies' order every other
round, so slow drift of a shared machine hits every proxy alike. A failure stops the run but not
the result: what was measured up to then is summarized and saved with the error.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from . import explain
from .environment import congestion_control, environment
from .processes import become_subreaper, stop_tree
from .report import FAILURE_KEYS, comparison, headline, markdown, ratios, summarize
from .scenarios import Scenarios
from .settings import (
    DENIED_HOST,
    INSTRUCTIONS,
    LARGE,
    SYSCALLS,
    TARGET_HOST,
    BenchError,
    JsonDict,
    Settings,
)
from .tools import bin_dir, build


def estimate_seconds(s: Settings, idle_tunnels: int) -> float:
    """Roughly how long the run takes, printed at the start, and the origin's lifetime."""
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


def run(s: Settings) -> tuple[JsonDict, int]:
    """The result and the exit status of a run: 0 when every scenario ran and nothing failed."""
    with congestion_control(s.congestion_control):
        return run_with(s, environment(s))


def run_with(s: Settings, env: JsonDict) -> tuple[JsonDict, int]:
    """The run itself; `env` is the machine as it was at the start (environment())."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    if s.client_cpu is not None:
        os.sched_setaffinity(0, {s.client_cpu})  # the driver keeps off the proxy's CPU
    become_subreaper()
    tools_dir = bin_dir()
    build(tools_dir)

    rundir = Path(tempfile.mkdtemp(prefix="cpbench-"))
    os.chmod(rundir, 0o777)  # Squid drops to user `proxy` and writes its logs here
    (rundir / "hosts").write_text(f"127.0.0.1 {TARGET_HOST} {DENIED_HOST}\n")
    os.chmod(rundir / "hosts", 0o644)
    bench = Scenarios(s, rundir, tools_dir, nofile=hard)
    started = datetime.now(UTC)
    eta = estimate_seconds(s, bench.idle_tunnels)
    print(
        f"proxies {', '.join(s.proxies)}; scenarios {', '.join(s.scenarios)}; {s.rounds} "
        f"round(s); TCP congestion control {env['tcp_congestion_control']}; about "
        f"{eta / 60:.1f} min; run folder {rundir}",
        flush=True,
    )
    rounds: list[JsonDict] = []
    explained: JsonDict | None = None
    error: str | None = None
    try:
        bench.tools.start_origin(rundir, lifetime=eta * 3 + 600)
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
        if LARGE in s.proxies:
            # Not a round's scenario: a figure of the command line, on the proxy's CPU too.
            runs = 5 if s.quick else explain.RUNS
            explained = explain.measure(s.connectproxy, rundir, runs)
            print(f"  {explain.line(explained)}", flush=True)
    except BenchError as exc:
        error = str(exc)  # reported with the table, after the partial results are saved
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        bench.journal.summarize_noise()
        if bench.tools.origin is not None:
            stop_tree(bench.tools.origin, grace=5)
        if not s.keep_rundir:
            shutil.rmtree(rundir, ignore_errors=True)

    summary = summarize(rounds, s.proxies)
    pair = comparison(s.proxies)
    ratio = ratios(summary, *pair) if pair else {}
    failures = {
        p: sum(summary[p].get(k, {}).get("sum", 0) for k in FAILURE_KEYS) for p in s.proxies
    }
    table = markdown(summary, s.proxies, ratio, pair)
    if explained is not None:
        table += f"\n\n{explain.line(explained)}"
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
        "policy_check": bench.journal.policy_check,
        "access_log_lines_per_instance": bench.journal.access_log_lines,
        "targets": bench.journal.targets,
        "warnings": bench.journal.warnings,
        "explain_large": explained,
        "table_markdown": table,
        "rundir": str(rundir),  # removed after the run unless --keep-rundir
        "raw": bench.journal.raw,
    }
    status = 1 if error or missing or any(failures.values()) else 0
    return result, status
