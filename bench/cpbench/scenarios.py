"""The scenarios: what each one asks of the load generator, and the figures it takes from that.

rate        closed-loop clients: tunnels/s and CONNECT->200 latency, then one client at a time.
throughput  bulk up and down through 1 and 8 tunnels: GB/s and proxy CPU seconds per GB.
idle        many open idle tunnels: proxy memory per tunnel; then every one must still echo.
instructions, syscalls  the rate exchange under callgrind or strace: counts per tunnel.

Every scenario runs on a fresh proxy process after a warm-up that must succeed, so no figure
includes a start-up cost or a proxy that was already failing.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .journal import Journal
from .procfs import Snapshot, interval, process_tree, tree_rss_kib
from .settings import (
    INSTRUCTIONS,
    SYSCALLS,
    TARGET_HOST,
    TRANSFERS,
    BenchError,
    JsonDict,
    Settings,
)
from .targets import Proxies, Target
from .tools import Tools, client_hello
from .tracers import callgrind_control, callgrind_total, strace_calls


class Scenarios:
    """The origin, the proxies and the records of one run, and the scenarios run on them."""

    def __init__(self, settings: Settings, rundir: Path, bin_dir: Path, nofile: int) -> None:
        self.s = settings
        self.rundir = rundir
        self.journal = Journal()
        hello = None
        if settings.client_hello:
            hello = rundir / "clienthello.bin"
            hello.write_bytes(client_hello(TARGET_HOST))
        self.tools = Tools(bin_dir, settings.client_cpu, hello)
        self.proxies = Proxies(settings, rundir, self.tools, self.journal, nofile)
        if settings.unpinned:
            self.journal.warn(
                "--unpinned: the proxy, the load generator and the origin share every CPU"
            )
        elif settings.proxy_cpu is None:
            self.journal.warn(
                "one CPU only: nothing is pinned, and the proxy shares it with the client"
            )
        self.idle_tunnels = min(settings.idle_tunnels, (nofile - 300) // 2)
        if self.idle_tunnels < settings.idle_tunnels:
            self.journal.warn(
                f"idle: {self.idle_tunnels} tunnels, not {settings.idle_tunnels}: the "
                f"open-file limit {nofile} allows 2 descriptors per tunnel"
            )

    def run_scenario(self, name: str, scenario: str, rnd: int) -> JsonDict:
        """One scenario on a fresh instance of proxy `name`: its figures for round `rnd`."""
        t = self.proxies.start(name, callgrind=scenario == INSTRUCTIONS)
        try:
            self.warm_up(t)
            run: dict[str, Callable[[Target, int], JsonDict]] = {
                "rate": self.scenario_rate,
                "throughput": self.scenario_throughput,
                "idle": self.scenario_idle,
                INSTRUCTIONS: self.scenario_instructions,
                SYSCALLS: self.scenario_syscalls,
            }
            return run[scenario](t, rnd)
        finally:
            self.proxies.stop(t)

    def loadgen(
        self,
        t: Target,
        mode: str,
        args: list[str],
        timeout: float,
        on_barrier: Callable[[str, int], None] | None = None,
    ) -> JsonDict:
        """The load generator against proxy `t` ("direct": against the origin itself)."""
        return self.tools.loadgen(t.port, t.name == "direct", mode, args, timeout, on_barrier)

    def measured(
        self, t: Target, mode: str, args: list[str], timeout: float, edges: tuple[str, str]
    ) -> tuple[JsonDict, JsonDict]:
        """Run the load generator and sample CPU at its two barriers `edges`."""
        assert self.tools.origin is not None
        origin_pid = self.tools.origin.pid
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
        """Exchanges that must all succeed before a figure counts: a proxy that fails them
        would be measured failing, and the first connections pay for lazy set-up."""
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
        """Tunnels/s at C closed-loop clients with the proxy's CPU per tunnel, then the
        latency of one client at a time, which concurrency would hide behind queueing."""
        s = self.s
        args = ["-c", str(s.concurrency), "--duration", str(s.duration)]
        res, cpu = self.measured(t, "rate", args, s.duration + 60, ("start", "done"))
        self.journal.raw.append(
            {"round": rnd, "proxy": t.name, "step": "rate", "loadgen": res, "cpu": cpu}
        )
        if res["oldest_in_flight_ms"] > 1000:
            age = res["oldest_in_flight_ms"]
            self.journal.warn(
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
        self.journal.check_client(t.name, "rate", cpu)
        if res["error_total"]:
            self.journal.warn(
                f"{t.name} rate: {res['error_total']} failed; first: {res['first_error']}"
            )

        args = ["-c", "1", "--duration", str(s.lat_duration)]
        res = self.loadgen(t, "rate", args, s.lat_duration + 60)
        self.journal.raw.append({"round": rnd, "proxy": t.name, "step": "latency", "loadgen": res})
        if res["error_total"]:
            self.journal.warn(
                f"{t.name} C=1: {res['error_total']} failed; first: {res['first_error']}"
            )
        m |= {
            "latency.tunnels_per_s": res["rate"],
            "latency.handshake_p50_us": res["handshake_us"]["p50"],
            "latency.handshake_p99_us": res["handshake_us"]["p99"],
            "latency.exchange_p50_us": res["exchange_us"]["p50"],
            "latency.failed": res["error_total"],
        }
        return m

    def scenario_throughput(self, t: Target, rnd: int) -> JsonDict:
        """GB/s and proxy CPU s/GB up and down through 1 and 8 tunnels: the relay loop alone."""
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
            self.journal.raw.append(
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
                self.journal.warn(f"{t.name} {key}: {res['first_error']}")
            self.journal.check_client(t.name, key, cpu)
        return m

    def scenario_idle(self, t: Target, rnd: int) -> JsonDict:
        """Proxy memory per open idle tunnel (sensors keep theirs open between messages); then every
        tunnel must still echo, so a proxy cannot look lean by dropping idle ones."""
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
        self.journal.raw.append(
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
            self.journal.warn(f"{t.name} idle: {res['first_error']}")
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
        self.journal.raw.append(
            {"round": rnd, "proxy": t.name, "step": "instructions", "loadgen": res}
        )
        total = sum(
            callgrind_total(path)
            for path in t.callgrind_out.parent.glob(f"{t.callgrind_out.name}.*")
        )
        if res["error_total"]:
            self.journal.warn(
                f"{t.name} instructions: {res['error_total']} failed; {res['first_error']}"
            )
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
        summary = self.rundir / f"{t.name}-{self.proxies.instances}.strace"
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
        self.journal.raw.append(
            {"round": rnd, "proxy": t.name, "step": "syscalls", "loadgen": res, "calls": calls}
        )
        done = res["completed"]
        if res["error_total"]:
            self.journal.warn(
                f"{t.name} syscalls: {res['error_total']} failed; {res['first_error']}"
            )
        return {
            "syscalls.per_tunnel": sum(calls.values()) / done if done and calls else None,
            "syscalls.tunnels": done,
            "syscalls.failed": res["error_total"],
        }
