"""The benchmark driver end to end, in its tiny `--quick` mode.

This does not judge performance (CI machines vary too much for that); it proves the benchmark
still runs against connectproxy and Squid, reports every figure the README promises, counts no
failed tunnel, and leaves no process behind. A broken benchmark would otherwise only be noticed
when someone needs its numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT

REPO = REPO_ROOT
PROXIES = ("connectproxy", "squid")
TRANSFERS = ("up1", "down1", "up8", "down8")

# Medians the README documents, per proxy.
FIGURES = (
    "rate.tunnels_per_s",
    "rate.handshake_p50_us",
    "rate.handshake_p99_us",
    "rate.proxy_cpu_pct",
    "rate.proxy_cpu_us_per_tunnel",
    "latency.tunnels_per_s",
    "latency.handshake_p50_us",
    "latency.handshake_p99_us",
    *(f"{t}.gb_per_s" for t in TRANSFERS),
    *(f"{t}.proxy_cpu_s_per_gb" for t in TRANSFERS),
    "idle.kib_per_tunnel",
    "idle.rss_held_mib",
    "idle.opens_per_s",
)
# Counts summed over rounds; every one must be zero.
FAILURES = (
    "rate.failed",
    "latency.failed",
    *(f"{t}.failed" for t in TRANSFERS),
    *(f"{t}.capped" for t in TRANSFERS),
    "idle.failed",
    "idle.open_failures",
    "idle.closed_while_held",
    "idle.echo_failures",
)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (the run folder is in every proxy's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def run_quick_bench(out: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    """`bench/run.py --quick ARGS` against this venv's connectproxy; the result JSON, with the
    printed output under "_stdout"."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            *args,
            "--connectproxy",
            str(Path(sys.executable).parent / "connectproxy"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    loaded["_stdout"] = done.stdout
    return loaded


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    return run_quick_bench(out, "--proxies", ",".join(PROXIES))


@pytest.mark.squid
def test_every_figure_is_reported_for_both_proxies(result: dict[str, Any]) -> None:
    assert result["error"] is None
    for proxy in PROXIES:
        summary = result["summary"][proxy]
        missing = [key for key in FIGURES if summary.get(key, {}).get("median") is None]
        assert not missing, f"{proxy} lacks {missing}"
        assert summary["rate.tunnels_per_s"]["median"] > 0
        for transfer in TRANSFERS:
            assert summary[f"{transfer}.gb_per_s"]["median"] > 0


@pytest.mark.squid
def test_no_tunnel_failed(result: dict[str, Any]) -> None:
    assert result["failures"] == {proxy: 0 for proxy in PROXIES}
    for proxy in PROXIES:
        counts = {key: result["summary"][proxy][key]["sum"] for key in FAILURES}
        assert counts == dict.fromkeys(FAILURES, 0), proxy


@pytest.mark.squid
def test_both_proxies_enforced_the_same_policy_with_logging_on(result: dict[str, Any]) -> None:
    expected = {"allowed": 200, "denied_domain": 403, "denied_port": 403}
    assert result["policy_check"] == dict.fromkeys(PROXIES, expected)
    for proxy in PROXIES:
        lines = result["access_log_lines_per_instance"][proxy]
        assert len(lines) == 3 and min(lines) > 0, lines  # one instance per scenario


@pytest.mark.squid
def test_ratios_and_table_compare_connectproxy_with_squid(result: dict[str, Any]) -> None:
    ratios = result["ratios"]
    assert (ratios["candidate"], ratios["reference"]) == ("connectproxy", "squid")
    assert ratios["values"]["rate.tunnels_per_s"] > 0
    header = "| metric | connectproxy | squid | connectproxy/squid | better |"
    assert header in result["table_markdown"]
    assert result["table_markdown"] in result["_stdout"]


@pytest.mark.squid
def test_nothing_is_left_running(result: dict[str, Any]) -> None:
    assert not Path(result["rundir"]).exists()
    assert processes_mentioning(result["rundir"]) == []


def test_a_scaling_run_compares_worker_counts_with_nothing_pinned(tmp_path: Path) -> None:
    """`--proxies connectproxy-w1,connectproxy-w2 --unpinned`: the run that shows `--workers`
    scaling on a machine whose load generator has no other host to run on."""
    result = run_quick_bench(
        tmp_path / "scaling.json",
        "--scenario",
        "rate",
        "--unpinned",
        "--proxies",
        "connectproxy-w1,connectproxy-w2",
    )
    assert result["settings"]["unpinned"] is True
    assert result["settings"]["proxy_cpu"] is None and result["settings"]["client_cpu"] is None
    for workers in (1, 2):
        name = f"connectproxy-w{workers}"
        assert result["targets"][name]["command"][-2:] == ["--workers", str(workers)]
        assert result["summary"][name]["rate.tunnels_per_s"]["median"] > 0
        assert result["summary"][name]["rate.failed"]["sum"] == 0
    ratios = result["ratios"]
    assert (ratios["candidate"], ratios["reference"]) == ("connectproxy-w2", "connectproxy-w1")
    assert (
        "| metric | connectproxy-w1 | connectproxy-w2 | connectproxy-w2/connectproxy-w1 |"
        in (result["table_markdown"])
    )
    assert processes_mentioning(result["rundir"]) == []


@pytest.mark.valgrind
def test_instruction_count_per_tunnel_under_callgrind(tmp_path: Path) -> None:
    """`--scenario instructions`: the figure that does not drift with the machine's speed, so
    a change to the set-up path can be judged from one run. Five seconds rather than the quick
    mode's one: under valgrind on a busy machine one second sometimes completed no exchange."""
    result = run_quick_bench(
        tmp_path / "instructions.json", "--scenario", "instructions", "--duration", "5", timeout=300
    )
    assert result["targets"]["connectproxy"]["command"][1] == "run"
    summary = result["summary"]["connectproxy"]
    assert summary["instructions.tunnels"]["median"] > 0
    # A tunnel costs a few hundred thousand instructions; zero would mean nothing was counted.
    assert 10_000 < summary["instructions.per_tunnel"]["median"] < 50_000_000
    assert summary["instructions.failed"]["sum"] == 0
    assert "instructions: user-space instructions/tunnel" in result["table_markdown"]
    assert processes_mentioning(result["rundir"]) == []


@pytest.mark.squid
def test_system_calls_per_tunnel_under_strace(tmp_path: Path) -> None:
    """`--scenario syscalls`: the kernel-side count, for both proxies, from one quick run."""
    result = run_quick_bench(
        tmp_path / "syscalls.json", "--scenario", "syscalls", "--proxies", ",".join(PROXIES)
    )
    for proxy in PROXIES:
        summary = result["summary"][proxy]
        assert summary["syscalls.tunnels"]["median"] > 0
        # A tunnel needs at least accept, connect and a close per socket; a few hundred would
        # mean the count took in something else.
        assert 5 < summary["syscalls.per_tunnel"]["median"] < 500
        assert summary["syscalls.failed"]["sum"] == 0
    calls = [r["calls"] for r in result["raw"] if r["step"] == "syscalls"]
    assert all("connect" in c for c in calls)
    assert "syscalls: system calls/tunnel" in result["table_markdown"]
    assert processes_mentioning(result["rundir"]) == []


def test_a_run_under_another_congestion_control_restores_the_systems_own(tmp_path: Path) -> None:
    """`--congestion-control`: on loopback the congestion control decides throughput more than
    either proxy does (bench/README.md), so a run records which one it had, can run under a
    chosen one, and leaves the system's own in place afterwards, also when the run fails."""
    sysctl = Path("/proc/sys/net/ipv4/tcp_congestion_control")
    before = sysctl.read_text().strip()
    available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    other = next(name for name in ("reno", "cubic", *available) if name != before)
    args = ("--quick", "--scenario", "throughput", "--proxies", "connectproxy", "--bytes", "64M")

    def bench(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "bench" / "run.py"), *args, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    if not os.access(sysctl, os.W_OK):
        refused = bench("--congestion-control", other)
        assert refused.returncode == 2 and "needs root" in refused.stderr
        return
    result = run_quick_bench(tmp_path / "cc.json", *args[1:], "--congestion-control", other)
    assert sysctl.read_text().strip() == before
    assert result["environment"]["tcp_congestion_control"] == other
    assert result["settings"]["congestion_control"] == other
    assert f"TCP congestion control {other};" in result["_stdout"]
    assert result["summary"]["connectproxy"]["up1.gb_per_s"]["median"] > 0
    assert result["failures"] == {"connectproxy": 0}

    # A proxy that cannot start fails the run after the switch: the system's own comes back.
    failed = bench(
        "--congestion-control", other, "--connectproxy", "/bin/false", "--out", str(tmp_path / "f")
    )
    assert failed.returncode == 1 and "exited with status 1 at start-up" in failed.stderr
    assert sysctl.read_text().strip() == before

    unknown = bench("--congestion-control", "nope")
    assert unknown.returncode == 2 and "is not one of this kernel's" in unknown.stderr
    assert sysctl.read_text().strip() == before


def test_a_connectproxy_that_is_not_there_is_refused_before_anything_starts() -> None:
    """A wrong --connectproxy is a usage error naming the flag, not a traceback mid-run."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--connectproxy", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--connectproxy: nope is not an executable" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_tls_guard_target_checks_a_real_client_hello_in_every_tunnel(tmp_path: Path) -> None:
    """`--proxies connectproxy-tls`: connectproxy with `tls: verify_sni`, and the load
    generator sends a real ClientHello for the target name first in every tunnel; the rate,
    throughput and idle figures must come with no failure, so every hello passed the guard."""
    result = run_quick_bench(
        tmp_path / "tls.json", "--proxies", "connectproxy-tls", "--keep-rundir", timeout=240
    )
    rundir = Path(result["rundir"])
    try:
        assert result["settings"]["client_hello"] is True
        assert 'tls: "verify_sni"' in result["targets"]["connectproxy-tls"]["config"]
        summary = result["summary"]["connectproxy-tls"]
        assert summary["rate.tunnels_per_s"]["median"] > 0
        assert result["failures"] == {"connectproxy-tls": 0}
        hello = (rundir / "clienthello.bin").read_bytes()
        logs = sorted(rundir.glob("connectproxy-tls-*-access.log"))
        assert len(logs) == 3  # rate, throughput, idle
        records = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
        tunnels = [r for r in records if r["outcome"] == "established"]
        assert len(tunnels) > 100
        assert all(r["sni"] == "bench.azure-devices.net" for r in tunnels)
        assert all(r["bytes_client_to_server"] >= len(hello) for r in tunnels)
        # Refused are only tunnels whose client closed before its hello: each policy check's
        # bare CONNECT, and the exchanges a rate phase drops in flight when its time is up.
        refused = [r for r in records if r["outcome"] == "tls_refused"]
        assert len(refused) < len(tunnels) / 4
        assert {(r["error"], r["bytes_client_to_server"]) for r in refused} == {
            ("incomplete ClientHello", 0)
        }
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    assert processes_mentioning(str(rundir)) == []
