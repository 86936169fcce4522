"""The monitoring artifacts (deploy/prometheus/, deploy/grafana/) and the Prometheus binaries
that check them. The binaries come from Debian's `prometheus` package, which .ci/run installs;
without them these tests fail and say so, since a rule file nobody evaluates proves nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "prometheus" / "connectproxy-rules.yml"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "tests"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "connectproxy.json"

# Grafana's own variables, with the values a query gets on a 15 s scrape interval.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def _binary(name: str) -> Path:
    path = Path("/usr/bin") / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: `apt-get install prometheus` (.ci/run installs it)")
    return path


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return _binary("prometheus")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows excluded."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def substitute(expr: str) -> str:
    """The query Grafana would send: dashboard variables at their default (an "All" at its
    allValue), Grafana's built-ins at a concrete value. A variable left over fails the test."""
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard()["templating"]["list"]:
        current = variable.get("current", {}).get("value")
        if current == "$__all":
            current = variable["allValue"]
        if isinstance(current, str) and current:
            values[variable["name"]] = current
    # Longest names first, so $__rate_interval is not read as $__rate followed by text.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"a dashboard variable with no value: {expr}"
    return expr
