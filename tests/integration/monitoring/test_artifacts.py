"""The alert rules through promtool (syntax, then the unit tests of deploy/prometheus/tests/),
and the dashboard's shape: what Grafana needs to import it and what SPEC section 8 asks it to
show. Whether its queries are valid PromQL is asked of a real Prometheus in test_live.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.integration.monitoring.conftest import (
    DASHBOARD,
    RULE_TESTS,
    RULES,
    dashboard,
    panel_targets,
    substitute,
)

# SPEC section 8, every required series (a histogram by its buckets, which the quantiles read).
SPEC_SERIES = (
    "connectproxy_requests_total",
    "connectproxy_connections_active",
    "connectproxy_tunnels_active",
    "connectproxy_tunnel_bytes_total",
    "connectproxy_connect_seconds_bucket",
    "connectproxy_tunnel_seconds_bucket",
    "connectproxy_upstream_failures_total",
    "connectproxy_config_reloads_total",
    "connectproxy_would_deny_total",
    "connectproxy_tls_refused_total",
)

# SPEC section 10, "Monitoring": the conditions the rules must cover, by alert name.
ALERTS = {
    "ConnectproxyDown",
    "ConnectproxyAbsent",
    "ConnectproxyNotReady",
    "ConnectproxyErrorOutcomesRising",
    "ConnectproxyUpstreamFailing",
    "ConnectproxyReloadFailed",
    "ConnectproxyFileDescriptorsNearLimit",
    "ConnectproxyDenialsSpike",
    "ConnectproxyTLSRefusedSpike",
}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules(promtool: Path) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    test_files = sorted(RULE_TESTS.glob("*.yml"))
    assert test_files
    result = run(promtool, "test", "rules", *test_files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    """A rule only ever tested quiet would pass with any threshold; one only tested firing
    would pass with `vector(1)`."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == ALERTS
    fires: set[str] = set()
    quiet: set[str] = set()
    for test_file in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == ALERTS
    assert quiet == ALERTS


def test_rules_are_labelled_and_explained() -> None:
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_dashboard_shape() -> None:
    """What an import into Grafana relies on: unique panel ids, a position for each panel, every
    query with a refId and the data source chosen by the dashboard's variable."""
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    names = {variable["name"] for variable in board["templating"]["list"]}
    assert names == {"datasource", "job", "instance"}


def test_dashboard_shows_every_series_of_the_spec() -> None:
    queried = set()
    for _, expr in panel_targets():
        queried |= set(re.findall(r"([a-z_:]+)\{", expr))
    missing = [name for name in SPEC_SERIES if name not in queried]
    assert not missing, missing
    # Histograms as quantiles, never as an average of buckets.
    for _, expr in panel_targets():
        if "_bucket" in expr:
            assert expr.startswith("histogram_quantile("), expr
            assert "sum by (le)" in expr, expr


def test_dashboard_queries_leave_no_variable() -> None:
    for title, expr in panel_targets():
        assert "$" not in substitute(expr), title
    assert DASHBOARD.read_text().endswith("\n")
