"""The `connectproxy doctor` command: its options, and the table of results (one row a target,
the step that failed and each step's time). The probing itself is doctor.py.

doctor.py (and with it the network layers, asyncio and ssl) is imported only when the command
runs: every other command builds the same argument parser, and `explain` must not pay for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectproxy.process.doctor import Result

# Seconds a target may take before doctor gives up on it.
DEFAULT_TIMEOUT = 10.0


def _duration(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _via(result: Result) -> str:
    """The upstream or the peer reached; before a connection, the addresses being tried."""
    if result.upstream or result.address:
        return result.upstream or result.address or ""
    if not result.addresses:
        return "-"
    first = result.addresses[0]
    more = len(result.addresses) - 1
    return f"{first} (+{more} more)" if more else first


def _row(result: Result) -> list[str]:
    via = _via(result)
    if result.ok:
        detail = result.tls_version or ""
        if result.upstream is not None:
            detail = f"{detail}, via upstream at {result.address}"
    else:
        detail = f"{result.step}: {result.error}"
    if result.note:
        detail = f"{detail}; {result.note}"
    return [
        result.target,
        "ok" if result.ok else "FAILED",
        via,
        _duration(result.dns_ms),
        _duration(result.connect_ms),
        _duration(result.tls_ms),
        _duration(result.total_ms),
        detail,
    ]


def format_table(results: Sequence[Result]) -> str:
    """Aligned columns; the last (free text) is not padded."""
    header = ["TARGET", "RESULT", "VIA", "DNS", "CONNECT", "TLS", "TOTAL", "DETAIL"]
    rows = [header, *(_row(r) for r in results)]
    numeric = {3, 4, 5, 6}
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row[:-1]):
            right = i in numeric and row is not header
            cells.append(cell.rjust(widths[i]) if right else cell.ljust(widths[i]))
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _summary(results: Sequence[Result]) -> str:
    reachable = sum(r.ok for r in results)
    if reachable == len(results):
        return f"all {len(results)} targets reachable"
    return f"{reachable} of {len(results)} targets reachable"


# ---- the command ------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("the timeout must be a positive number of seconds")
    return value


def add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="open a tunnel and a TLS handshake to each target the way the proxy would",
        description="Open a tunnel to each target the way the proxy would (allowlist, "
        "destinations.hosts, DNS, deny_networks, upstream) and complete a TLS handshake with "
        "the target's name. Exit 0 when every target is reachable, 1 otherwise.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (default: "
        "/etc/connectproxy/connectproxy.yaml if present, else the embedded default)",
    )
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help="verify certificates against these CAs (PEM) instead of the system store",
    )
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a target after this long (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="HOST or HOST:PORT (default port 443); default: every exact domain in allow.domains",
    )
    p.set_defaults(func=cmd_doctor)


def _usage_error(message: str) -> int:
    print(f"connectproxy: doctor: {message}", file=sys.stderr)
    return 2


def cmd_doctor(args: argparse.Namespace) -> int:
    """0 when every target is reachable, 1 otherwise, 2 for a mistake on the command line.
    A broken config raises ConfigError, which the CLI prints (exit 2)."""
    import json
    import ssl
    from pathlib import Path

    import uvloop

    from connectproxy.configfile.load import load_config
    from connectproxy.process.doctor import (
        TargetError,
        default_targets,
        parse_doctor_target,
        run_doctor,
    )

    config = load_config(Path(args.config) if args.config else None)
    skipped: list[str] = []
    if args.targets:
        try:
            targets = list(dict.fromkeys(parse_doctor_target(t) for t in args.targets))
        except TargetError as exc:
            return _usage_error(str(exc))
    else:
        targets, skipped = default_targets(config)
        if not targets:
            return _usage_error(
                f"{config.source} allows no exact domain to test (only patterns: "
                f"{', '.join(skipped) or 'none'}); name hosts to test as TARGET arguments"
            )
    try:
        tls_context = ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        return _usage_error(f"cannot use --ca-file {args.ca_file}: {reason}")

    results = uvloop.run(run_doctor(config, targets, tls_context, args.timeout))

    skipped_note = (
        f"not tested: {', '.join(skipped)} (patterns, no single host to test; "
        "name hosts under them as TARGET arguments)"
        if skipped
        else None
    )
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
        if skipped_note:
            print(skipped_note, file=sys.stderr)
    else:
        trust = f"CAs in {args.ca_file}" if args.ca_file else "the system trust store"
        print(f"config {config.source}; certificates checked against {trust}")
        print()
        print(format_table(results))
        print()
        print(_summary(results))
        if skipped_note:
            print(skipped_note)
    return 0 if all(r.ok for r in results) else 1
