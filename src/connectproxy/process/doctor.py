"""`connectproxy doctor`: can this host reach the allowlisted endpoints the way the proxy would?

Operators run it while setting up a proxy and when sensors report trouble. Each target is opened
exactly as the running proxy would open a tunnel to it: the allowlist check, `destinations.hosts`
then DNS, `deny_networks`, or the upstream chain. A TLS handshake with the target's name then
proves the far end is the real endpoint and not a captive portal or an intercepting middlebox
that a sensor would reject.

Every failure names the step where it happened, because the step says whom to call: the owner of
the allowlist (policy), DNS, the firewall (tcp), the upstream proxy's owner (upstream), or whoever
runs the certificates (tls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connectproxy.config.model import Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import load_config
from connectproxy.matching.addresses import endpoint_text
from connectproxy.net.dial import DialError, open_tcp, resolve
from connectproxy.net.sockio import peer_address, recv, send_all
from connectproxy.policy.decide import Route, destination_allowed, route_for, usable_addresses
from connectproxy.wire.http import RequestError, Target, parse_target

if TYPE_CHECKING:
    # Imported for real inside `run_doctor` only: the CLI imports this module at start, and
    # `run --workers N` must set PROMETHEUS_MULTIPROC_DIR before prometheus-client is first
    # imported (it picks its value storage then), so nothing here may import it at load time.
    from connectproxy.net.upstream import Upstreams
    from connectproxy.observe.metrics import Metrics

DEFAULT_PORT = 443
DEFAULT_TIMEOUT = 10.0

Step = Literal["policy", "dns", "tcp", "upstream", "tls"]


@dataclass
class Result:
    """What happened to one target. Times are milliseconds; `None` for a step not reached (or,
    for `dns_ms`, not done by us: an upstream resolves the names of the tunnels it carries)."""

    target: str
    ok: bool = False
    step: Step | None = None  # the step that failed
    error: str | None = None
    route: Route | None = None
    addresses: list[str] | None = None  # what the name resolved to, minus deny_networks
    address: str | None = None  # the peer our TCP connection reached (destination or upstream)
    upstream: str | None = None
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    total_ms: float | None = None
    tls_version: str | None = None
    note: str | None = None  # report mode: the proxy lets this through, enforce mode would not

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class _StepFailed(Exception):
    def __init__(self, step: Step, error: str) -> None:
        super().__init__(error)
        self.step = step
        self.error = error


class TargetError(ValueError):
    """A TARGET argument that is not HOST, HOST:PORT, [IPv6]:PORT or an IPv6 address."""


def parse_doctor_target(text: str) -> Target:
    """The command-line spelling of a target, with port 443 when none is given. The same parser
    as the proxy's request line checks it, so doctor accepts exactly what a sensor may ask for."""
    if text.startswith("[") and text.endswith("]"):
        authority = f"{text}:{DEFAULT_PORT}"
    elif text.count(":") > 1 and not text.startswith("["):
        authority = f"[{text}]:{DEFAULT_PORT}"  # a bare IPv6 address
    elif ":" in text:
        authority = text
    else:
        authority = f"{text}:{DEFAULT_PORT}"
    try:
        return parse_target(authority)
    except RequestError as exc:
        raise TargetError(f"invalid target {text!r}: {exc.reason}") from None


def default_targets(config: Config) -> tuple[list[Target], list[str]]:
    """Every exact domain of the allowlist on port 443, and the patterns left out: `.x` and `*.x`
    stand for hosts we cannot guess (an IoT hub's name is the customer's own)."""
    targets: list[Target] = []
    patterns: list[str] = []
    for pattern in config.allow.domains:
        if pattern.kind != "exact":
            patterns.append(pattern.text)
            continue
        target = Target(host=pattern.domain, port=DEFAULT_PORT, ip=None)
        if target not in targets:
            targets.append(target)
    return targets, patterns


def _ms_since(began: float) -> float:
    """Milliseconds since `began` (a `time.perf_counter()`): uvloop's `loop.time()` only ticks
    in whole milliseconds, too coarse for a loopback handshake."""
    return round((time.perf_counter() - began) * 1000, 3)


class _Probe:
    """One target's walk through the steps. `stage` is the step in progress, so a timeout that
    strikes from outside can still be blamed on the right one."""

    def __init__(
        self,
        target: Target,
        config: Config,
        upstreams: Upstreams | None,
        metrics: Metrics,
        tls_context: ssl.SSLContext,
    ) -> None:
        self.target = target
        self.config = config
        self.upstreams = upstreams
        self.metrics = metrics
        self.tls_context = tls_context
        self.result = Result(target=target.authority)
        self.stage: Step = "policy"
        self.sock: socket.socket | None = None

    async def run(self, timeout: float) -> Result:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                self._check_policy()
                if self.result.route == "upstream":
                    early = await self._open_via_upstream()
                else:
                    await self._open_direct()
                    early = b""
                await self._tls_handshake(early)
            self.result.ok = True
        except _StepFailed as exc:
            self.result.step, self.result.error = exc.step, exc.error
        except TimeoutError:
            self.result.step = self.stage
            self.result.error = f"no answer within {timeout:g} s (--timeout)"
        finally:
            if self.sock is not None:
                self.sock.close()
            self.result.total_ms = _ms_since(began)
        return self.result

    def _check_policy(self) -> None:
        """Section 4 step 5 as the proxy applies it; admission (step 4) is about the client, and
        doctor is not one."""
        target, allow = self.target, self.config.allow
        if target.port not in allow.ports:
            raise _StepFailed("policy", f"port {target.port} is not in allow.ports")
        allowed, why = destination_allowed(target, self.config)
        if not allowed:
            if allow.mode != "report":
                raise _StepFailed("policy", f"destination not allowed: {why}")
            self.result.note = f"report mode lets this through; enforce mode would not ({why})"
        self.result.route = route_for(target, self.config)

    async def _open_direct(self) -> None:
        """Resolve once, drop denied addresses, connect to what is left: `Server._open`'s path,
        bounded by `timeouts.connect` like the proxy's."""
        target, config = self.target, self.config
        limit = config.timeouts.connect
        try:
            async with asyncio.timeout(limit):
                self.stage = "dns"
                began = time.perf_counter()
                addrs = await resolve(target, config)
                self.result.dns_ms = _ms_since(began)
                usable = usable_addresses(addrs, config)
                self.result.addresses = [str(a) for a in usable]
                if not usable:
                    listed = ", ".join(str(a) for a in addrs)
                    raise _StepFailed(
                        "policy", f"{listed}: every address is in destinations.deny_networks"
                    )
                self.stage = "tcp"
                began = time.perf_counter()
                self.sock, reached = await open_tcp(usable, target.port)
                self.result.connect_ms = _ms_since(began)
        except DialError as exc:
            raise _StepFailed(self.stage, exc.reason) from None
        except TimeoutError:
            raise _StepFailed(
                self.stage, f"no answer within {limit:g} s (timeouts.connect)"
            ) from None
        self.result.address = endpoint_text(reached, target.port)

    async def _open_via_upstream(self) -> bytes:
        """The upstream chain with its failover and cool-downs; returns the bytes the upstream
        sent after its 2xx (the start of the destination's TLS answer)."""
        assert self.upstreams is not None
        self.stage = "upstream"
        began = time.perf_counter()
        try:
            sock, early, proxy = await self.upstreams.open(
                self.target, self.config.timeouts.connect, self.metrics
            )
        except DialError as exc:
            raise _StepFailed("upstream", exc.reason) from None
        self.sock = sock
        self.result.connect_ms = _ms_since(began)
        self.result.upstream = proxy.name
        self.result.address = peer_address(sock)
        return early

    async def _tls_handshake(self, early: bytes) -> None:
        """A TLS client over memory buffers rather than `wrap_socket`: through an `https://`
        upstream the socket already speaks TLS to the upstream, and this TLS runs inside it."""
        assert self.sock is not None
        self.stage = "tls"
        began = time.perf_counter()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.tls_context.wrap_bio(incoming, outgoing, server_hostname=self.target.host)
        if early:
            incoming.write(early)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._send_pending(outgoing)
                    data = await recv(self.sock, 65536)
                    if data:
                        incoming.write(data)
                    else:
                        incoming.write_eof()
            await self._send_pending(outgoing)  # our Finished, so the server sees a clean end
        except ssl.SSLCertVerificationError as exc:
            raise _StepFailed("tls", f"certificate rejected: {exc.verify_message}") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise _StepFailed("tls", "the server closed the connection in the handshake") from None
        except ssl.SSLError as exc:
            raise _StepFailed("tls", f"handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise _StepFailed("tls", f"connection lost: {exc.strerror or exc}") from None
        self.result.tls_ms = _ms_since(began)
        self.result.tls_version = tls.version()

    async def _send_pending(self, outgoing: ssl.MemoryBIO) -> None:
        assert self.sock is not None
        data = outgoing.read()
        if data:
            await send_all(self.sock, data)


async def run_doctor(
    config: Config, targets: Sequence[Target], tls_context: ssl.SSLContext, timeout: float
) -> list[Result]:
    """Probe every target at once (a dead one must not make the others wait) and return the
    results in the order of `targets`. Raises ConfigError when an upstream's TLS files cannot
    be loaded, as `connectproxy run` would."""
    from prometheus_client import CollectorRegistry

    from connectproxy.net.upstream import Upstreams
    from connectproxy.observe.metrics import Metrics

    upstreams = None
    if config.upstream is not None and config.upstream.proxies:
        try:
            upstreams = Upstreams(config.upstream)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                config.source, "upstream.proxies", None, f"cannot load a TLS file: {exc}"
            ) from None
    # Upstream failures are counted as the proxy counts them, in a registry nobody serves.
    metrics = Metrics(CollectorRegistry())
    probes = [_Probe(t, config, upstreams, metrics, tls_context) for t in targets]
    return list(await asyncio.gather(*(p.run(timeout) for p in probes)))


# ---- output -----------------------------------------------------------------------------------


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
    import uvloop

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
