"""The Prometheus series of SPEC section 8, scraped from a real proxy process after a scripted
sequence of connections: every outcome the proxy can produce is provoked a known number of times
and the counters must match exactly.

Different client source addresses come from binding the client socket to 127.0.0.2 and 127.0.0.3
(all of 127/8 is loopback on Linux): admission and the per-source limit see distinct clients.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import socketserver
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from connectproxy.credentials.passwords import hash_password
from connectproxy.observe.metrics import CONNECT_BUCKETS, FLUSH_DELAY, HistogramTally, Metrics
from connectproxy.outcome import OUTCOMES
from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    OriginServer,
    ProxyProcess,
    ThreadedServer,
    connect_from,
    echo_exchange,
    finish,
    http_get,
    open_tunnel_from_source,
    read_head,
    scrape,
    status_of,
    value,
    wait_for_metric,
)

SENSOR = "sensor.azure-devices.net"
SLOW = "slow.azure-devices.net"
UPDATES = "download.microsoft.com"
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)

# ---- scraping ---------------------------------------------------------------------------------


def families(proxy: ProxyProcess) -> dict[str, str]:
    """Metric family name -> type, as a Prometheus server would read them."""
    return {f.name: f.type for f in text_string_to_metric_families(proxy.metrics_text())}


# ---- clients ----------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def ask(
    port: int, target: str, headers: str = "", source: str = "127.0.0.1", raw: bytes | None = None
) -> int:
    """One request on one connection; the status it got."""
    with connect_from(source, port) as sock:
        if raw is None:
            raw = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode()
        sock.sendall(raw)
        return status_of(read_head(sock))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- a recording upstream -------------------------------------------------------------------


class _RefusingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RefusingUpstream = self.server  # type: ignore[assignment]
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        server.heads.append(head)
        body = b"not for you\n"
        self.request.sendall(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )


class RefusingUpstream(ThreadedServer):
    """An upstream proxy that records each CONNECT head and answers 403."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__(_RefusingHandler)


@pytest.fixture()
def refusing_upstream() -> Iterator[RefusingUpstream]:
    with RefusingUpstream() as server:
        yield server


@pytest.fixture()
def full_listener() -> Iterator[int]:
    """A listener whose accept queue is full: further SYNs are dropped, a connect never ends."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = int(full.getsockname()[1])
        fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        yield port
        for s in fillers:
            s.close()


def base_config(*ports: int, **overrides: Any) -> dict[str, Any]:
    """127.0.0.1 is the client "local"; anyone else must log in as "sensor2"."""
    config: dict[str, Any] = {
        "allow": {"ports": [443, *ports], "domains": [".azure-devices.net", ".invalid", UPDATES]},
        "clients": [{"name": "local", "networks": ["127.0.0.1/32"]}],
        "users": [{"name": "sensor2", "password_hash": PASSWORD_HASH}],
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1", SLOW: "127.0.0.1"},
            "deny_networks": LOOPBACK_OK_DENY,
        },
    }
    config.update(overrides)
    return config


# ---- the tests --------------------------------------------------------------------------------


def test_every_outcome_is_counted_exactly(
    make_proxy: ProxyFactory,
    origin: OriginServer,
    refusing_upstream: RefusingUpstream,
    full_listener: int,
) -> None:
    dead, dead_upstream = closed_port(), closed_port()
    config = base_config(
        origin.port,
        dead,
        full_listener,
        upstream={
            "proxies": [
                {"url": f"http://127.0.0.1:{dead_upstream}"},
                {"url": f"http://127.0.0.1:{refusing_upstream.port}"},
            ],
            "direct_domains": [".azure-devices.net", ".invalid"],
        },
        timeouts={"handshake": 1, "connect": 1},
        limits={"max_connections_per_source": 3},
    )
    proxy = make_proxy(config)
    port = proxy.port
    good = basic("sensor2", PASSWORD)
    expected = dict.fromkeys(OUTCOMES, 0)

    # established: one admitted by address, one by credentials from another address.
    for source, headers in (("127.0.0.1", ""), ("127.0.0.2", good)):
        sock = open_tunnel_from_source(port, f"{SENSOR}:{origin.port}", headers, source)
        echo_exchange(sock, b"Ehello")
        finish(sock)
        expected["established"] += 1

    assert ask(port, "", raw=b"garbage\r\n\r\n") == 400
    expected["bad_request"] += 1
    assert (
        ask(port, "", raw=b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n") == 405
    )
    expected["method_not_allowed"] += 1
    assert ask(port, f"{SENSOR}:{origin.port}", source="127.0.0.2") == 407
    expected["auth_required"] += 1
    assert ask(port, f"{SENSOR}:{origin.port}", basic("sensor2", "wrong"), "127.0.0.2") == 407
    expected["auth_failed"] += 1
    assert ask(port, "evil.example.com:443") == 403
    assert ask(port, f"{SENSOR}:22") == 403
    expected["forbidden"] += 2
    assert ask(port, f"nothing.invalid:{origin.port}") == 502
    expected["resolve_failed"] += 1
    assert ask(port, f"{SENSOR}:{dead}") == 502
    expected["connect_failed"] += 1
    assert ask(port, f"{SLOW}:{full_listener}") == 504
    expected["connect_timeout"] += 1
    # Through the upstreams: the dead one fails over to the one that refuses.
    assert ask(port, f"{UPDATES}:{origin.port}", good, "127.0.0.2") == 502
    expected["upstream_refused"] += 1

    # Three silent connections from one source fill its limit; the fourth is refused at once,
    # and the three are answered 408 at the handshake timeout.
    held = [connect_from("127.0.0.3", port) for _ in range(3)]
    time.sleep(0.3)
    assert ask(port, "", source="127.0.0.3", raw=b"") == 503
    expected["overloaded"] += 1
    for sock in held:
        assert status_of(read_head(sock)) == 408
        sock.close()
    expected["handshake_timeout"] += 3

    samples = wait_for_metric(proxy, "connectproxy_connections_active", 0)
    counted = {o: value(samples, "connectproxy_requests_total", outcome=o) for o in OUTCOMES}
    assert counted == expected
    assert sum(counted.values()) == 16  # one outcome per connection made
    assert value(samples, "connectproxy_connections_active") == 0
    dead_name = f"http://127.0.0.1:{dead_upstream}"
    refusing_name = f"http://127.0.0.1:{refusing_upstream.port}"
    assert value(samples, "connectproxy_upstream_failures_total", upstream=dead_name) == 1
    assert value(samples, "connectproxy_upstream_failures_total", upstream=refusing_name) == 0
    # The upstream got our CONNECT, never the client's credentials.
    [head] = refusing_upstream.heads
    assert head.startswith(f"CONNECT {UPDATES}:{origin.port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization" not in head
    assert value(samples, "connectproxy_connect_seconds_count") == 2
    assert value(samples, "connectproxy_tunnel_seconds_count") == 2


def test_tunnel_gauges_bytes_and_histograms(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(base_config(origin.port))
    target = f"{SENSOR}:{origin.port}"
    good = basic("sensor2", PASSWORD)
    local = open_tunnel_from_source(proxy.port, target)
    others = [open_tunnel_from_source(proxy.port, target, good, "127.0.0.2") for _ in range(2)]
    samples = wait_for_metric(proxy, "connectproxy_tunnels_active", 2, client="sensor2")
    assert value(samples, "connectproxy_tunnels_active", client="local") == 1
    assert value(samples, "connectproxy_tunnels_active", client="sensor2") == 2
    assert value(samples, "connectproxy_connections_active") == 3

    # The long tunnel streams; its bytes must show up while it is still open.
    block = b"x" * 65536
    echo_exchange(local, b"E" + block)
    sent = 1 + len(block)
    deadline = time.monotonic() + 5
    moving = 0.0
    while time.monotonic() < deadline:
        echo_exchange(local, block)
        sent += len(block)
        labels = {"client": "local", "direction": "client_to_server"}
        moving = value(scrape(proxy), "connectproxy_tunnel_bytes_total", **labels)
        if moving > 0:
            break
        time.sleep(0.2)
    assert 0 < moving <= sent, "bytes counter did not move while the tunnel was open"

    finish(local)
    for sock in others:
        echo_exchange(sock, b"Eabc")
        finish(sock)
    samples = wait_for_metric(proxy, "connectproxy_connections_active", 0)
    for direction in ("client_to_server", "server_to_client"):
        series = "connectproxy_tunnel_bytes_total"
        assert value(samples, series, client="local", direction=direction) == sent
        assert value(samples, series, client="sensor2", direction=direction) == 2 * 4
    assert value(samples, "connectproxy_tunnels_active", client="local") == 0
    assert value(samples, "connectproxy_tunnels_active", client="sensor2") == 0
    assert value(samples, "connectproxy_connect_seconds_count") == 3
    assert value(samples, "connectproxy_tunnel_seconds_count") == 3
    assert value(samples, "connectproxy_requests_total", outcome="established") == 3


def test_report_mode_counts_would_deny(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    config = base_config(origin.port)
    config["allow"]["mode"] = "report"
    config["destinations"]["hosts"]["elsewhere.example.org"] = "127.0.0.1"
    proxy = make_proxy(config)
    for target in ("elsewhere.example.org", "elsewhere.example.org", SENSOR):
        sock = open_tunnel_from_source(proxy.port, f"{target}:{origin.port}")
        echo_exchange(sock, b"E")
        finish(sock)
    assert ask(proxy.port, "elsewhere.example.org:22") == 403  # ports are still enforced
    samples = wait_for_metric(proxy, "connectproxy_connections_active", 0)
    would_deny = value(samples, "connectproxy_would_deny_total", client="local", policy="default")
    assert would_deny == 2
    assert value(samples, "connectproxy_requests_total", outcome="established") == 3
    assert value(samples, "connectproxy_requests_total", outcome="forbidden") == 1
    records = proxy.access_records(expect=4)
    assert [r["would_deny"] for r in records] == [True, True, False, False]
    # The port refusal is decided by no policy.
    assert [r["policy"] for r in records] == ["default", "default", "default", None]


def test_ops_endpoints_series_types_and_process_metrics(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy(base_config())
    assert http_get(proxy.metrics_port, "/healthz") == (200, b"ok\n")
    assert http_get(proxy.metrics_port, "/readyz") == (200, b"ready\n")
    assert http_get(proxy.metrics_port, "/nope")[0] == 404
    assert http_get(proxy.metrics_port, "/metrics", "POST")[0] == 405
    assert http_get(proxy.metrics_port, "/metrics?x=1")[0] == 200
    types = families(proxy)
    for name, kind in {
        "connectproxy_requests": "counter",
        "connectproxy_connections_active": "gauge",
        "connectproxy_tunnels_active": "gauge",
        "connectproxy_tunnel_bytes": "counter",
        "connectproxy_connect_seconds": "histogram",
        "connectproxy_tunnel_seconds": "histogram",
        "connectproxy_upstream_failures": "counter",
        "connectproxy_config_reloads": "counter",
        "connectproxy_would_deny": "counter",
        "connectproxy_ready": "gauge",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_open_fds": "gauge",
    }.items():
        assert types.get(name) == kind, name
    samples = scrape(proxy)
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "connectproxy_ready") == 1  # what /readyz answered above
    # Every outcome is exported from the start, so a rate() over it never starts from nothing.
    for outcome in OUTCOMES:
        assert ("connectproxy_requests_total", frozenset({("outcome", outcome)})) in samples
    for result in ("success", "failure"):
        assert value(samples, "connectproxy_config_reloads_total", result=result) == 0


# ---- batching (in process) --------------------------------------------------------------------


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_changes_are_applied_together_after_the_flush_delay() -> None:
    """The set-up path tallies; the series change `FLUSH_DELAY` after the first change, all at
    once, and not in the meantime."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    series = metrics.client("sensors")
    for _ in range(3):
        metrics.connection_opened()
        metrics.count("established")
        metrics.tunnel_opened(series)
    metrics.connection_closed()
    metrics.tunnel_closed(series)
    metrics.add_tunnel_bytes(series, 100, 2000)
    assert _sample(registry, "connectproxy_requests_total", outcome="established") == 0
    assert _sample(registry, "connectproxy_connections_active") == 0

    await asyncio.sleep(FLUSH_DELAY / 2)
    assert _sample(registry, "connectproxy_requests_total", outcome="established") == 0
    await asyncio.sleep(FLUSH_DELAY)

    assert _sample(registry, "connectproxy_requests_total", outcome="established") == 3
    assert _sample(registry, "connectproxy_connections_active") == 2
    assert _sample(registry, "connectproxy_tunnels_active", client="sensors") == 2
    up = {"client": "sensors", "direction": "client_to_server"}
    down = {"client": "sensors", "direction": "server_to_client"}
    assert _sample(registry, "connectproxy_tunnel_bytes_total", **up) == 100
    assert _sample(registry, "connectproxy_tunnel_bytes_total", **down) == 2000

    metrics.count("forbidden")
    metrics.flush()  # what a scrape does first
    assert _sample(registry, "connectproxy_requests_total", outcome="forbidden") == 1
    await asyncio.sleep(FLUSH_DELAY * 1.5)  # the flush already scheduled finds nothing left
    assert _sample(registry, "connectproxy_requests_total", outcome="forbidden") == 1


def test_without_a_running_loop_changes_apply_at_once() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.count("bad_request")
    assert _sample(registry, "connectproxy_requests_total", outcome="bad_request") == 1


def test_upstream_failure_counts_are_what_the_scrape_shows() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.upstream_failure_counts() == {}
    for name in ("http://a:8080", "http://b:8080", "http://a:8080"):
        metrics.upstream_failed(name)
    assert metrics.upstream_failure_counts() == {"http://a:8080": 2, "http://b:8080": 1}
    assert _sample(registry, "connectproxy_upstream_failures_total", upstream="http://a:8080") == 2


def _histogram(registry: CollectorRegistry) -> dict[str, float]:
    """Bucket, count and sum samples by name and bound (`_created` is a time: left out)."""
    return {
        sample.name + sample.labels.get("le", ""): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_tally_gives_exactly_what_observing_each_value_gives() -> None:
    """HistogramTally writes into prometheus-client's own bucket values; this is the check that
    those internals still mean what they did: same buckets, counts, sum, and +Inf, including
    values exactly on a bound, across several applies."""
    values = [0.0, 0.0004, 0.0005, 0.0007, 0.001, 0.3, 2.5, 29.9, 30.0, 31.0, 1e9]
    reference = CollectorRegistry()
    observed = Histogram("t_seconds", "t", buckets=CONNECT_BUCKETS, registry=reference)
    tallied_registry = CollectorRegistry()
    tallied = Histogram("t_seconds", "t", buckets=CONNECT_BUCKETS, registry=tallied_registry)
    tally = HistogramTally(tallied, CONNECT_BUCKETS)
    for round_ in range(3):
        for v in values[round_:]:
            observed.observe(v)
            tally.observe(v)
        tally.apply()
        tally.apply()  # nothing pending: adds nothing
        assert _histogram(tallied_registry) == pytest.approx(_histogram(reference))
    count = tallied_registry.get_sample_value("t_seconds_count")
    assert count == len(values) * 3 - 3
    assert tallied_registry.get_sample_value("t_seconds_bucket", {"le": "+Inf"}) == count


def test_a_histogram_without_the_expected_internals_is_observed_value_by_value() -> None:
    """Another prometheus-client may keep a histogram's values differently: then the tally
    must not write anywhere, only pass each value to `observe` at once."""

    class OtherHistogram:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    other = OtherHistogram()
    tally = HistogramTally(cast(Histogram, other), CONNECT_BUCKETS)
    assert tally.direct
    tally.observe(0.002)
    tally.observe(40.0)
    tally.apply()
    assert other.seen == [0.002, 40.0]
    real = Histogram("r_seconds", "r", buckets=CONNECT_BUCKETS, registry=CollectorRegistry())
    assert not HistogramTally(real, CONNECT_BUCKETS).direct


async def test_histograms_are_applied_after_the_flush_delay() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.connected(0.0003)
    metrics.connected(0.002)
    metrics.tunnel_lasted(5.0)
    assert _sample(registry, "connectproxy_connect_seconds_count") == 0

    await asyncio.sleep(FLUSH_DELAY * 1.5)

    assert _sample(registry, "connectproxy_connect_seconds_count") == 2
    assert _sample(registry, "connectproxy_connect_seconds_bucket", le="0.0005") == 1
    assert _sample(registry, "connectproxy_connect_seconds_bucket", le="0.0025") == 2
    assert _sample(registry, "connectproxy_connect_seconds_sum") == pytest.approx(0.0023)
    assert _sample(registry, "connectproxy_tunnel_seconds_bucket", le="1.0") == 0
    assert _sample(registry, "connectproxy_tunnel_seconds_bucket", le="10.0") == 1
