"""Prometheus series of SPEC section 8: the only mutable global state the product has.

The tunnel hot path never touches these. Tunnels keep plain integer byte counts; the server adds
their growth to the counters every few seconds and once more at close (`flush_tunnel_bytes`), so a
long tunnel's bytes show up while it is open without a metrics call per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = (
    "established",
    "bad_request",
    "method_not_allowed",
    "auth_required",
    "auth_failed",
    "forbidden",
    "resolve_failed",
    "connect_failed",
    "connect_timeout",
    "upstream_refused",
    "overloaded",
    "handshake_timeout",
)


@dataclass(frozen=True)
class ClientSeries:
    """The labelled children of one `client` label, looked up once instead of per tunnel."""

    tunnels_active: Any
    bytes_up: Any
    bytes_down: Any


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
            buckets=(
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
            ),
            registry=registry,
        )
        self.tunnel_seconds = Histogram(
            "connectproxy_tunnel_seconds",
            "Lifetime of established tunnels.",
            buckets=(0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14400, 86400),
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
            "Report mode: tunnels enforce mode would have refused.",
            ["client"],
            registry=registry,
        )
        self.handshake_failures = Counter(
            "connectproxy_handshake_failures",
            "Connections closed before a request: bad PROXY header or failed TLS handshake.",
            ["reason"],
            registry=registry,
        )

        self._outcomes = {outcome: self.requests.labels(outcome) for outcome in OUTCOMES}
        self._clients: dict[str, ClientSeries] = {}

    def count(self, outcome: str) -> None:
        """One client connection ended with `outcome`."""
        self._outcomes[outcome].inc()

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
