"""The Prometheus series (docs/operations.md, "Metrics"): the only mutable global state we have.

The tunnel hot path never touches these. Tunnels keep plain integer byte counts; the server adds
their growth to the counters every few seconds and once more at close, so a long tunnel's bytes
show up while it is open without a metrics call per chunk.

The set-up path does not call prometheus-client per connection either. Each of its updates is an
interpreted call that takes a lock (and in multiprocess mode writes a shared file), and a tunnel
made seven of them: at ten thousand tunnels a second that was 8% of the proxy's CPU. Connection
and tunnel counts, outcomes and bytes are tallied in plain integers instead and applied at most
every `FLUSH_DELAY` seconds (`flush`, scheduled by the first change), so under load many tunnels
share one update. The ops listener flushes before it renders, so a scrape still sees every
connection that has ended; with `--workers` the supervisor reads the workers' shared files, which
are at most `FLUSH_DELAY` behind. The two histograms are tallied the same way (`HistogramTally`).

Every series is written through a method here, never from outside, so the batching above holds
and a reader finds every metric's writers in one file.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from connectproxy.outcome import OUTCOMES, Outcome

# Seconds between applications of the tallies. Applying them once per event-loop iteration
# cost 36,000 user-space instructions each time (interpreted calls, a lock per series), and
# under load an iteration holds only a tunnel or two: 7-9% of a tunnel's instructions
# (bench/run.py --scenario instructions). A tenth of a second is still far below any scrape
# interval.
FLUSH_DELAY = 0.1


class ClientSeries:
    """The labelled children of one `client` label, looked up once instead of per tunnel, and
    the changes not yet applied to them."""

    def __init__(self, tunnels_active: Any, bytes_up: Any, bytes_down: Any) -> None:
        self.tunnels_active = tunnels_active
        self.bytes_up = bytes_up
        self.bytes_down = bytes_down
        self.tunnels_change = 0
        self.up_pending = 0
        self.down_pending = 0

    def flush(self) -> None:
        if self.tunnels_change:
            self.tunnels_active.inc(self.tunnels_change)
            self.tunnels_change = 0
        if self.up_pending:
            self.bytes_up.inc(self.up_pending)
            self.up_pending = 0
        if self.down_pending:
            self.bytes_down.inc(self.down_pending)
            self.down_pending = 0


class HistogramTally:
    """Observations of one histogram not yet applied to it.

    prometheus-client has no public way to add many observations at once, and `observe` is an
    interpreted call that takes two locks, twice per tunnel. Measured with `bench/run.py
    --scenario instructions`: observing directly costs 9,000 of a tunnel's 235,000 user-space
    instructions (4%), over the 2% a private API must earn (ARCHITECTURE.md).
    Here an observation is a bucket count and a sum in compiled code, and `apply` adds them to
    the values `observe` itself increments: the histogram's `_sum` and its `_buckets`, one value
    per bucket, not cumulative (the exposition accumulates them). Those two attributes are
    prometheus-client's internals; tests/test_metrics.py checks that a tally gives exactly the
    samples that observing each value would, so a change of them fails a test, not a scrape. A
    prometheus-client whose histogram lacks them (a newer one, installed by hand) still gets
    every value, through `observe`, one at a time."""

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self.histogram = histogram
        # `observe`'s rule: the first bucket whose bound is >= the value; +Inf takes the rest.
        self.bounds = (*(float(b) for b in buckets), math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.pending = False
        total, per_bucket = getattr(histogram, "_sum", None), getattr(histogram, "_buckets", None)
        self.direct = not (
            hasattr(total, "inc")
            and isinstance(per_bucket, list)
            and len(per_bucket) == len(self.bounds)
            and all(hasattr(b, "inc") for b in per_bucket)
        )

    def observe(self, value: float) -> None:
        if self.direct:
            self.histogram.observe(value)
            return
        bounds = self.bounds
        i = 0
        while value > bounds[i]:
            i += 1
        self.counts[i] += 1
        self.total += value
        self.pending = True

    def apply(self) -> None:
        if not self.pending:
            return
        self.pending = False
        hist: Any = self.histogram
        hist._sum.inc(self.total)
        self.total = 0.0
        counts = self.counts
        for i, n in enumerate(counts):
            if n:
                hist._buckets[i].inc(n)
                counts[i] = 0


CONNECT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
TUNNEL_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14400, 86400)


class Metrics:
    """All series, registered in one registry (the default one for the running server, a fresh
    one per test)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "connectproxy_requests",
            "Client connections by how they ended.",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.connections_active = Gauge(
            "connectproxy_connections_active",
            "Client connections open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tunnels_active = Gauge(
            "connectproxy_tunnels_active",
            "Tunnels open now.",
            ["client"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tunnel_bytes = Counter(
            "connectproxy_tunnel_bytes",
            "Bytes copied through tunnels.",
            ["client", "direction"],
            registry=registry,
        )
        self.connect_seconds = Histogram(
            "connectproxy_connect_seconds",
            "From the policy decision to the 200 being sent.",
            buckets=CONNECT_BUCKETS,
            registry=registry,
        )
        self.tunnel_seconds = Histogram(
            "connectproxy_tunnel_seconds",
            "Lifetime of established tunnels.",
            buckets=TUNNEL_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "connectproxy_upstream_failures",
            "Failed attempts to use an upstream proxy.",
            ["upstream"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "connectproxy_config_reloads",
            "SIGHUP reloads by result.",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.would_deny = Counter(
            "connectproxy_would_deny",
            "Report mode: tunnels enforce mode would have refused, by the policy in report mode.",
            ["client", "policy"],
            registry=registry,
        )
        # Set from the same predicate /readyz answers, each time /metrics is rendered, so an
        # alert rule sees what a load balancer sees. With --workers only the supervisor sets it;
        # its workers' copies stay 0, and "livemax" reports the supervisor's value.
        self.ready = Gauge(
            "connectproxy_ready",
            "1 while /readyz answers 200 (serving), 0 while draining or not all workers ready.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.tls_refused = Counter(
            "connectproxy_tls_refused",
            "Tunnels the TLS guard closed after the 200, by why (SPEC 5.1).",
            ["client", "reason"],
            registry=registry,
        )
        self.handshake_failures = Counter(
            "connectproxy_handshake_failures",
            "Connections closed before a request: bad PROXY header or failed TLS handshake.",
            ["reason"],
            registry=registry,
        )

        self._outcomes = {outcome: self.requests.labels(outcome) for outcome in OUTCOMES}
        self._connect_times = HistogramTally(self.connect_seconds, CONNECT_BUCKETS)
        self._tunnel_times = HistogramTally(self.tunnel_seconds, TUNNEL_BUCKETS)
        self._clients: dict[str, ClientSeries] = {}
        # Changes not yet applied (module docstring).
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._connections_change = 0
        self._flush_scheduled = False
        # The loop that serves the connections, when made inside it (the running proxy): asking
        # asyncio for the running loop on every change costs a getpid() system call (CPython
        # checks it was not forked), twice per tunnel.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def count(self, outcome: Outcome) -> None:
        """One client connection ended with `outcome`."""
        self._counts[outcome] += 1
        self._changed()

    def connection_opened(self) -> None:
        self._connections_change += 1
        self._changed()

    def connection_closed(self) -> None:
        self._connections_change -= 1
        self._changed()

    def tunnel_opened(self, series: ClientSeries) -> None:
        series.tunnels_change += 1
        self._changed()

    def tunnel_closed(self, series: ClientSeries) -> None:
        series.tunnels_change -= 1
        self._changed()

    def connected(self, seconds: float) -> None:
        """A tunnel's upstream side is open and its 200 sent, `seconds` after the decision."""
        self._connect_times.observe(seconds)
        self._changed()

    def tunnel_lasted(self, seconds: float) -> None:
        self._tunnel_times.observe(seconds)
        self._changed()

    def would_deny_seen(self, client: str, policy: str) -> None:
        """`policy`, in report mode, let a tunnel through that enforce mode would refuse."""
        self.would_deny.labels(client, policy).inc()

    def tls_refused_seen(self, client: str, reason: str) -> None:
        """The TLS guard closed a tunnel of `client`: `reason` is one of policy/tlsguard.py's
        REASONS. Rare, like a would_deny, so not batched."""
        self.tls_refused.labels(client, reason).inc()

    def handshake_failed(self, reason: str) -> None:
        """A connection closed before its request: bad PROXY header ("proxy_protocol") or a
        failed TLS handshake ("tls")."""
        self.handshake_failures.labels(reason).inc()

    def upstream_failed(self, upstream: str) -> None:
        """An attempt to use this upstream proxy failed; it cools down (docs/configuration.md,
        "upstream")."""
        self.upstream_failures.labels(upstream).inc()

    def upstream_failure_counts(self) -> dict[str, int]:
        """Failed attempts per upstream since start, the figures /metrics shows (the status
        page reads them here rather than keep a second count)."""
        counts: dict[str, int] = {}
        for family in self.upstream_failures.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["upstream"]] = int(sample.value)
        return counts

    def readiness(self, ready: bool) -> None:
        """What /readyz answers now; called just before /metrics is rendered."""
        self.ready.set(1 if ready else 0)

    def reloaded(self, result: str) -> None:
        """A SIGHUP reload ended: "success" or "failure"."""
        self.config_reloads.labels(result).inc()

    def add_tunnel_bytes(self, series: ClientSeries, up: int, down: int) -> None:
        """Bytes a tunnel of this client has copied since the last call for it."""
        series.up_pending += up
        series.down_pending += down
        self._changed()

    def _changed(self) -> None:
        if self._flush_scheduled:
            return
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a shutdown path): nothing to batch with
                self.flush()
                return
        self._flush_scheduled = True
        loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Apply every tallied change to the series."""
        self._flush_scheduled = False
        if self._connections_change:
            self.connections_active.inc(self._connections_change)
            self._connections_change = 0
        counts = self._counts
        for outcome, n in counts.items():
            if n:
                self._outcomes[outcome].inc(n)
                counts[outcome] = 0
        for series in self._clients.values():
            series.flush()
        self._connect_times.apply()
        self._tunnel_times.apply()

    def client(self, name: str) -> ClientSeries:
        """Series for a `client` label; names come from the config only, so this stays small."""
        series = self._clients.get(name)
        if series is None:
            series = self._clients[name] = ClientSeries(
                self.tunnels_active.labels(name),
                self.tunnel_bytes.labels(name, "client_to_server"),
                self.tunnel_bytes.labels(name, "server_to_client"),
            )
        return series
