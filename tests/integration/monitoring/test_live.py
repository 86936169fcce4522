"""A real Prometheus scraping a real proxy, with the rules of deploy/prometheus/ loaded.

One Prometheus and one proxy for the module, both on loopback ports of their own and stopped by
PID at the end. Prometheus scrapes and evaluates every second. Once it has scraped the idle
proxy, the traffic starts: an established tunnel held open, one that ended, sixty 403s, and a
SIGHUP on a broken config. Then the rules are read back from Prometheus's API (every one healthy,
every expression valid), the two alerts this traffic must raise fire and no other does, and
every query of the Grafana dashboard is asked of the same Prometheus.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.monitoring.conftest import RULES, panel_targets, substitute
from tests.support import (
    SENSOR,
    ExternalServer,
    OriginServer,
    ProxyProcess,
    config_for,
    echo_exchange,
    finish,
    free_port,
    open_tunnel_with_early_data,
    request,
    wait_until,
)

DENIALS = 60  # 0.2/s over the rule's 5 minutes: above its 0.1/s floor

# Urllib would honour a proxy from the environment; these requests stay on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Stack:
    proxy: ProxyProcess
    prometheus: ExternalServer
    api: str

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """A Prometheus API answer, errors included (they come with a 400 and a JSON body)."""
        url = f"{self.api}{path}?{urllib.parse.urlencode(params)}"
        try:
            with _OPENER.open(url, timeout=5) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        return answer

    def ready(self) -> bool:
        """Prometheus listens before its storage is open, and answers 503 until then."""
        try:
            with _OPENER.open(f"{self.api}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def alerts(self) -> dict[str, str]:
        """Alert name -> state (pending or firing)."""
        return {
            alert["labels"]["alertname"]: alert["state"]
            for alert in self.get("/api/v1/alerts")["data"]["alerts"]
        }

    def scraped_value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None


def prometheus_config(folder: Path, metrics_port: int) -> Path:
    path = folder / "prometheus.yml"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "connectproxy",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("monitoring")
    (folder / "proxy").mkdir()
    with OriginServer() as origin:
        proxy = ProxyProcess(config_for(origin.port), folder / "proxy").start()
        port = free_port()
        prometheus = ExternalServer(
            [
                str(prometheus_binary),
                f"--config.file={prometheus_config(folder, proxy.metrics_port)}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            (port,),
            folder / "prometheus.log",
        )
        held: socket.socket | None = None
        try:
            prometheus.start()
            stack = Stack(proxy, prometheus, f"http://127.0.0.1:{port}")
            wait_until(stack.ready, 10.0, "Prometheus ready")
            # Counters must be seen at 0 before they move, or rate() has nothing to start from.
            wait_until(
                lambda: stack.scraped_value('up{job="connectproxy"}') == 1, 10.0, "first scrape"
            )
            target = f"{SENSOR}:{origin.port}"
            ended = open_tunnel_with_early_data(proxy.port, target)
            echo_exchange(ended, b"E" + b"x" * 1000)
            finish(ended)
            held = open_tunnel_with_early_data(proxy.port, target)
            echo_exchange(held, b"E" + b"y" * 5000)
            for _ in range(DENIALS):
                assert request(proxy.port, "example.com:443")[0] == 403
            proxy.config_path.write_text("allow: [not, a, mapping]\n")
            proxy.signal(signal.SIGHUP)
            yield stack
        finally:
            if held is not None:
                held.close()
            prometheus.stop()
            proxy.stop()


def test_every_rule_loads_and_evaluates_healthy(stack: Stack) -> None:
    names = {r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}

    def evaluated() -> bool:
        groups = stack.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return {r["name"] for r in rules} == names and all(
            r["health"] == "ok" and not r.get("lastError") for r in rules
        )

    wait_until(evaluated, 10.0, "every rule evaluated without error")


def test_every_rule_expression_is_valid_on_the_live_series(stack: Stack) -> None:
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        answer = stack.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)


def test_the_traffic_fires_the_denials_and_reload_alerts_and_nothing_else(stack: Stack) -> None:
    expected = {"ConnectproxyDenialsSpike": "firing", "ConnectproxyReloadFailed": "firing"}
    deadline = time.monotonic() + 20
    while stack.alerts() != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.alerts() == expected, stack.prometheus.output()[-2000:]
    instance = f"127.0.0.1:{stack.proxy.metrics_port}"
    for alert in stack.get("/api/v1/alerts")["data"]["alerts"]:
        assert alert["labels"]["instance"] == instance
        assert alert["annotations"]["summary"].startswith(f"connectproxy {instance}")
    # The series the quiet rules read are there and healthy, so quiet means "no problem", not
    # "no data".
    assert stack.scraped_value('connectproxy_ready{job="connectproxy"}') == 1
    fds = stack.scraped_value('process_open_fds{job="connectproxy"}')
    assert fds is not None and fds > 0


def has_data(stack: Stack, query: str) -> bool:
    return bool(stack.query(query)["data"]["result"])


def test_every_dashboard_query_is_valid_promql_on_the_live_series(stack: Stack) -> None:
    # Series a labelled counter only gets on its first event; this traffic has none of them.
    no_event_yet = (
        "connectproxy_upstream_failures_total",
        "connectproxy_would_deny_total",
        "connectproxy_tls_refused_total",
        "connectproxy_handshake_failures_total",
    )
    for title, expr in panel_targets():
        query = substitute(expr)
        answer = stack.query(query)
        assert answer["status"] == "success", (title, expr, answer)
        if not any(name in expr for name in no_event_yet):
            # A series born with the traffic needs two scrapes before rate() has a value.
            wait_until(functools.partial(has_data, stack, query), 10.0, title)


def test_the_dashboard_queries_every_series_the_proxy_exports(stack: Stack) -> None:
    queried = " ".join(expr for _, expr in panel_targets())
    exported = {
        re.sub(r"_(bucket|count|sum|created|total)$", "", sample["__name__"])
        for sample in stack.get("/api/v1/series", **{"match[]": '{__name__=~"connectproxy_.+"}'})[
            "data"
        ]
    }
    assert exported
    missing = sorted(name for name in exported if name not in queried)
    assert not missing, missing
