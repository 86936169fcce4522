"""From per-round figures to what a reader sees: medians, ratios, the Markdown table, progress.

Figures are medians over rounds (one slow round on a shared machine does not move a median),
failure counts are sums (one failed tunnel in any round matters), and the ratio column compares
the candidate with Squid, or the most workers with the fewest in a scaling run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .settings import INSTRUCTIONS, LARGE, SYSCALLS, TRANSFERS, WORKERS_NAME, JsonDict


@dataclass(frozen=True)
class Metric:
    """One row of the table: the figure's key in a round's metrics, its label, and which way
    is better, which decides how rounds are combined and what the last column says."""

    key: str
    label: str
    # "higher" or "lower" is better; "info" gives context (is the client or the machine the
    # limit?); "zero" marks failure counts, summed over rounds rather than medians.
    better: str


def metric_table() -> list[Metric]:
    """Every figure, in the table's order: the one list the summary, ratios and table share."""
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
    """candidate / reference for every median both have (a zero reference has no ratio)."""
    out: JsonDict = {}
    for metric in metric_table():
        a = summary.get(candidate, {}).get(metric.key, {}).get("median")
        b = summary.get(reference, {}).get(metric.key, {}).get("median")
        if a is not None and b:
            out[metric.key] = a / b
    return out


def fmt(value: float) -> str:
    """Three significant figures or so: more would be noise on any machine."""
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
    """The table printed at the end and stored in the result file: one row per figure any
    proxy has, each median with its spread over rounds."""
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


def comparison(proxies: Sequence[str]) -> tuple[str, str] | None:
    """Which two targets the ratio column compares: the candidate against Squid, or else the
    most workers against the fewest (a scaling run)."""
    if "squid" in proxies:
        return next(((c, "squid") for c in proxies if c != "squid"), None)
    if LARGE in proxies and "connectproxy" in proxies:
        return LARGE, "connectproxy"  # the large config against the small one
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
