"""The benchmark driver's pure parts: size flags, tracer output, CPU accounting, the report.

tests/integration/bench/test_bench_smoke.py runs the whole driver, but a quick run cannot show that
a median, a ratio or the noise accounting is computed right: a wrong one still prints a plausible
table. These parts take plain values, so they are checked here on figures worked out by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cpbench import explain, largeconfig
from cpbench.cli import parse_args, parse_size
from cpbench.procfs import Snapshot, other_ticks
from cpbench.report import comparison, fmt, markdown, ratios, summarize
from cpbench.settings import BENCH_DIR as BENCH
from cpbench.settings import TARGET_HOST
from cpbench.tools import client_hello
from cpbench.tracers import callgrind_total, strace_calls

from connectproxy.wire.tlshello import ClientHello, parse_client_hello


@pytest.mark.parametrize(
    ("text", "size"),
    [("4G", 4 << 30), ("512M", 512 << 20), ("64MiB", 64 << 20), ("1e9", 10**9), ("8", 8)],
)
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_size_without_a_number_is_refused_by_name() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: '12Q'"):
        parse_size("12Q")


STRACE_TABLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.000400           2       200           epoll_wait
 30.00    0.000300           1       300        50 read
 30.00    0.000300           3       100           connect
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           1       600        50 total
"""


def test_strace_table_gives_calls_per_system_call_without_the_total() -> None:
    assert strace_calls(STRACE_TABLE) == {"epoll_wait": 200, "read": 300, "connect": 100}
    assert strace_calls("") == {}


def test_callgrind_total_trusts_the_totals_line(tmp_path: Path) -> None:
    dump = tmp_path / "out.1"
    dump.write_text("events: Ir\nsummary: 0\nfn=main\n1 5\ntotals: 123456\n")
    assert callgrind_total(dump) == 123456
    dump.write_text("events: Ir\nsummary: 777\n")
    assert callgrind_total(dump) == 777
    dump.write_text("events: Ir\n")
    assert callgrind_total(dump) == 0


def snapshot(others: dict[tuple[int, int], tuple[int, int]]) -> Snapshot:
    return Snapshot(t=0.0, proxy_ticks=0, client_ticks=0, others=others, cpus={})


def test_noise_counts_only_the_ticks_inside_the_interval() -> None:
    """A survivor counts its growth, a newcomer counts whole, and a child that exited in
    between (its lifetime folded into its parent's) counts only what it used after `a`."""
    a = snapshot({(10, 1): (1, 100), (11, 2): (10, 40), (20, 3): (1, 7)})
    # Between: 11 used 5 more and exited (10 now holds 100 + 45 + 2 of its own),
    # 20 used 3, and 30 started and used 4.
    b = snapshot({(10, 1): (1, 147), (20, 3): (1, 10), (30, 4): (1, 4)})
    assert other_ticks(a, b) == (147 - 100 - 40) + 3 + 4


def test_a_recycled_pid_is_a_new_process() -> None:
    a = snapshot({(10, 1): (1, 50)})
    b = snapshot({(10, 9): (1, 6)})
    assert other_ticks(a, b) == 6


def rounds() -> list[dict[str, object]]:
    figures = {
        "connectproxy": [(900.0, 0), (1000.0, 1), (1100.0, 0)],
        "squid": [(500.0, 0), (500.0, 0), (500.0, 2)],
    }
    return [
        {"round": n, "proxy": proxy, "metrics": {"rate.tunnels_per_s": rate, "rate.failed": bad}}
        for proxy, per_round in figures.items()
        for n, (rate, bad) in enumerate(per_round, 1)
    ]


def test_figures_are_medians_and_failures_are_sums() -> None:
    summary = summarize(rounds(), ["connectproxy", "squid"])
    rate = summary["connectproxy"]["rate.tunnels_per_s"]
    assert (rate["median"], rate["min"], rate["max"]) == (1000.0, 900.0, 1100.0)
    assert summary["connectproxy"]["rate.failed"] == {"sum": 1, "values": [0, 1, 0]}
    assert summary["squid"]["rate.failed"]["sum"] == 2
    assert ratios(summary, "connectproxy", "squid") == {"rate.tunnels_per_s": 2.0}


def test_the_table_shows_medians_spread_ratio_and_direction() -> None:
    proxies = ["connectproxy", "squid"]
    summary = summarize(rounds(), proxies)
    table = markdown(summary, proxies, ratios(summary, *proxies), ("connectproxy", "squid"))
    assert table.splitlines() == [
        "| metric | connectproxy | squid | connectproxy/squid | better |",
        "|---|---|---|---|---|",
        "| rate: tunnels/s (C clients) | 1,000 ±10% | 500 ±0% | 2.00 | higher |",
        "| rate: failed exchanges | 1 | 2 | - | 0 |",
    ]


def test_numbers_keep_about_three_figures() -> None:
    assert [fmt(v) for v in (0, 1234.5, 56.78, 3.14159)] == ["0", "1,234", "56.8", "3.14"]


def test_the_ratio_compares_with_squid_or_else_the_most_workers_with_the_fewest() -> None:
    assert comparison(["connectproxy", "squid"]) == ("connectproxy", "squid")
    assert comparison(["squid", "direct"]) == ("direct", "squid")
    workers = ["connectproxy-w4", "connectproxy-w1", "connectproxy-w2"]
    assert comparison(workers) == ("connectproxy-w4", "connectproxy-w1")
    assert comparison(["connectproxy"]) is None
    assert comparison(["connectproxy", "connectproxy-large"]) == (
        "connectproxy-large",
        "connectproxy",
    )
    assert comparison(["connectproxy-large", "squid"]) == ("connectproxy-large", "squid")


# --- the large policy config ----------------------------------------------------------------------


def test_large_config_has_the_size_it_claims_and_the_benchmark_client_last() -> None:
    large = largeconfig.generate((443, 18443))
    assert large.pattern_count == 10_000
    assert len(large.policies) == 100 and len({p.name for p in large.policies}) == 100
    assert all(len(p.domains) == 100 and p.ports == (443, 18443) for p in large.policies)
    assert len(large.clients) == 1000 and len(large.users) == 1000
    names = {p.name for p in large.policies}
    assert all(set(c.policies) <= names for c in (*large.clients, *large.users))
    bench = large.clients[-1]
    assert (bench.name, bench.networks) == ("bench", ("127.0.0.0/8",))
    allowing = [p.name for p in large.policies if largeconfig.TARGET_PATTERN in p.domains]
    assert allowing == [bench.policies[-1]]
    # No other client's network holds the benchmark's source.
    assert all(n.startswith("10.") for c in large.clients[:-1] for n in c.networks)
    assert largeconfig.generate((443, 18443)) == large  # the same config every run


def test_large_config_takes_the_place_of_the_small_configs_clients() -> None:
    small = (BENCH / "templates" / "connectproxy.yaml").read_text()
    grown = largeconfig.yaml(largeconfig.generate((443, 1)), largeconfig.password_hash())
    text = largeconfig.splice(small, grown)
    assert text.count("clients:") == 1 and "  p099:\n" in text
    assert text.startswith(small[: small.index("clients:")])
    assert text.endswith(small[small.index("clients:") + len(largeconfig.SMALL_CLIENTS) :])
    with pytest.raises(ValueError, match="no longer has the clients key"):
        largeconfig.splice("listen: []\n", grown)


def test_large_config_password_hash_is_one_connectproxy_accepts() -> None:
    from connectproxy.credentials.passwords import check_hash_format, verify_password

    digest = largeconfig.password_hash()
    check_hash_format(digest)
    assert verify_password("bench", digest)


def test_the_recorded_client_hello_is_one_for_the_target_name() -> None:
    """The bytes `--client-hello` sends are a whole ClientHello naming the target, which the
    proxy's own reader accepts, so connectproxy-tls measures the guard passing every tunnel."""
    hello = client_hello(TARGET_HOST)
    parsed = parse_client_hello(hello)
    assert isinstance(parsed, ClientHello) and parsed.length == len(hello)
    assert parsed.server_name == TARGET_HOST and parsed.version_text == "1.3"
    assert len(hello) <= 16384  # loadgen's HELLO_MAX


def test_the_tls_guard_target_implies_the_client_hello() -> None:
    assert parse_args(["--proxies", "connectproxy-tls", "--quick"]).client_hello
    assert parse_args(["--proxies", "connectproxy", "--quick", "--client-hello"]).client_hello
    assert not parse_args(["--proxies", "connectproxy", "--quick"]).client_hello


def test_the_explain_line_gives_the_median_and_the_bare_start() -> None:
    stats = {"median_ms": 61.4, "min_ms": 55.0, "max_ms": 90.2, "runs": 21}
    result = {"explain": stats, "bare_start": {**stats, "median_ms": 19.6}}
    assert explain.line(result) == (
        "explain on the large config: median 61 ms over 21 runs (min 55, max 90); "
        "the interpreter alone starts in 20 ms"
    )
    del result["bare_start"]
    assert explain.line(result).endswith("(min 55, max 90)")


def test_the_interpreter_is_read_from_the_console_scripts_first_line(tmp_path: Path) -> None:
    script = tmp_path / "connectproxy"
    script.write_text("#!/bin/sh\nexec true\n")
    assert explain._interpreter(str(script)) == "/bin/sh"
    script.write_text("no interpreter line\n")
    assert explain._interpreter(str(script)) is None
    assert explain._interpreter(str(tmp_path / "missing")) is None


def test_the_explain_config_is_the_large_targets_config() -> None:
    text = explain.large_config_text(8443)
    assert text.count("    domains: [") == largeconfig.POLICIES
    assert "ports: [443, 8443]" in text
