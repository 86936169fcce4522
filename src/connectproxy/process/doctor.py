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

import asyncio
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from connectproxy.config.model import Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.net.connector import AddressesDenied, Connector
from connectproxy.net.deadlines import Deadlines
from connectproxy.net.dial import DialError
from connectproxy.net.sockio import recv, send_all
from connectproxy.net.upstream import Upstreams
from connectproxy.policy.decide import Route, destination
from connectproxy.wire.http import RequestError, Target, parse_target

DEFAULT_PORT = 443

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
        connector: Connector,
        tls_context: ssl.SSLContext,
    ) -> None:
        self.target = target
        self.config = config
        self.connector = connector
        self.tls_context = tls_context
        self.result = Result(target=target.authority)
        self.stage: Step = "policy"
        self.sock: socket.socket | None = None

    async def run(self, timeout: float) -> Result:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                self._check_policy()
                early = await self._open()
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
        """The destination step as the proxy decides it; admission is about the client, and
        doctor is not one. With no identity there are no bound policies, so the target is
        checked against the default policy (`allow`) alone, as for a client bound to
        `[default]`; a target only another policy allows is reported as refused."""
        decision = destination(self.target, self.config)
        if not decision.allowed:
            raise _StepFailed("policy", decision.reason)
        if decision.would_deny:
            why = decision.reason.removesuffix(" (report mode)")
            self.result.note = f"report mode lets this through; enforce mode would not ({why})"
        self.result.route = decision.route

    async def _open(self) -> bytes:
        """The connection the proxy would open, through the proxy's own `Connector`: resolve once,
        drop denied addresses, connect to what is left, or go through the upstream chain with
        its failover. Bounded by `timeouts.connect` like the proxy's, with each step timed.
        Returns the bytes an upstream sent after its 2xx (the start of the destination's TLS
        answer)."""
        target, limit = self.target, self.config.timeouts.connect
        upstream = self.result.route == "upstream"
        self.stage = "upstream" if upstream else "dns"
        try:
            async with asyncio.timeout(limit):
                began = time.perf_counter()
                if upstream:
                    dialed = await self.connector.through_upstream(target)
                    self.result.upstream = dialed.upstream
                else:
                    usable = await self.connector.addresses(target)
                    self.result.dns_ms = _ms_since(began)
                    self.result.addresses = [str(a) for a in usable]
                    self.stage = "tcp"
                    began = time.perf_counter()
                    dialed = await self.connector.connect(usable, target)
                self.result.connect_ms = _ms_since(began)
        except AddressesDenied as denied:
            listed = ", ".join(str(a) for a in denied.addresses)
            raise _StepFailed(
                "policy", f"{listed}: every address is in destinations.deny_networks"
            ) from None
        except DialError as exc:
            raise _StepFailed(self.stage, exc.reason) from None
        except TimeoutError:
            raise _StepFailed(
                self.stage, f"no answer within {limit:g} s (timeouts.connect)"
            ) from None
        self.sock = dialed.sock
        self.result.address = dialed.server_addr
        return dialed.early

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
    upstreams = None
    if config.upstream is not None and config.upstream.proxies:
        try:
            upstreams = Upstreams(config.upstream)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                config.source, "upstream.proxies", None, f"cannot load a TLS file: {exc}"
            ) from None
    deadlines = Deadlines(asyncio.get_running_loop())
    # Failures are in each result; the upstream's cool-down is all the connector needs to keep.
    connector = Connector(config, upstreams, deadlines, upstream_failed=lambda name: None)
    try:
        probes = [_Probe(t, config, connector, tls_context) for t in targets]
        return list(await asyncio.gather(*(p.run(timeout) for p in probes)))
    finally:
        deadlines.close()
