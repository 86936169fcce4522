"""Per-client policies over real sockets (SPEC section 3.2): a proxy process whose two clients,
told apart by source address (127.0.0.2 and 127.0.0.3), are bound to two policies written in
its YAML file. Each reaches its own origin and is refused the other's; only one policy is in
report mode, and the access log, the would_deny counter and `connectproxy explain` all name the
policy that decided.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    OriginServer,
    ProxyProcess,
    connect_from,
    echo_exchange,
    finish,
    metric,
    open_tunnel_from_source,
    read_head,
    status_of,
)

PLANT = "127.0.0.2"  # client "plant", bound to policy "iot"
JUMP = "127.0.0.3"  # client "jump", bound to policy "updates" (report mode)
IOT_HOST = "hub.iot.example"
UPDATES_HOST = "download.updates.example"
ELSEWHERE = "other.elsewhere.example"


@dataclass
class Site:
    proxy: ProxyProcess
    iot: OriginServer
    updates: OriginServer


@pytest.fixture()
def site(make_proxy: ProxyFactory) -> Iterator[Site]:
    with OriginServer() as iot, OriginServer() as updates:
        config: dict[str, Any] = {
            # `allow` (the default policy) admits nothing: nobody is bound to it.
            "allow": {"ports": [443], "domains": ["unused.example"]},
            "policies": {
                "iot": {"ports": [iot.port], "domains": [".iot.example"]},
                "updates": {
                    "ports": [updates.port],
                    "domains": [UPDATES_HOST],
                    "mode": "report",
                },
            },
            "clients": [
                {"name": "plant", "networks": [f"{PLANT}/32"], "policies": ["iot"]},
                {"name": "jump", "networks": [f"{JUMP}/32"], "policies": ["updates"]},
            ],
            "destinations": {
                "hosts": {h: "127.0.0.1" for h in (IOT_HOST, UPDATES_HOST, ELSEWHERE)},
                "deny_networks": LOOPBACK_OK_DENY,
            },
        }
        yield Site(make_proxy(config), iot, updates)


def tunnel_works(site: Site, source: str, target: str, origin: OriginServer) -> None:
    before = origin.connections
    sock = open_tunnel_from_source(site.proxy.port, target, source=source)
    echo_exchange(sock, b"E" + b"policy" * 100)
    finish(sock)
    assert origin.connections == before + 1


def refused(site: Site, source: str, target: str) -> bytes:
    with connect_from(source, site.proxy.port) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return read_head(sock)


def test_each_client_reaches_only_its_own_policys_origin(site: Site) -> None:
    iot_target = f"{IOT_HOST}:{site.iot.port}"
    updates_target = f"{UPDATES_HOST}:{site.updates.port}"
    tunnel_works(site, PLANT, iot_target, site.iot)
    tunnel_works(site, JUMP, updates_target, site.updates)
    # The other's origin: plant's policy is enforce; jump's policy does not hold that port,
    # so report mode cannot let it through either.
    answer = refused(site, PLANT, updates_target)
    assert status_of(answer) == 403, answer
    # The reason names the policy tried, never what any policy allows.
    assert f"port {site.updates.port} not allowed by policy iot".encode() in answer, answer
    assert UPDATES_HOST.encode() not in answer.split(b"\r\n\r\n", 1)[1]
    answer = refused(site, JUMP, iot_target)
    assert status_of(answer) == 403, answer
    assert f"port {site.iot.port} not allowed by policy updates".encode() in answer, answer
    assert site.iot.connections == 1 and site.updates.connections == 1

    records = {(r["client"], r["target"]): r for r in site.proxy.access_records(expect=4)}
    assert len(records) == 4
    assert records[("plant", iot_target)]["policy"] == "iot"
    assert records[("plant", iot_target)]["status"] == 200
    assert records[("jump", updates_target)]["policy"] == "updates"
    assert records[("plant", updates_target)]["status"] == 403
    assert records[("jump", iot_target)]["status"] == 403
    # One policy is in report mode, so every line says whether enforce would have refused.
    assert not any(r["would_deny"] for r in records.values())


def test_report_mode_applies_to_its_own_policy_only(site: Site) -> None:
    # jump's policy is in report mode: a host outside it, on its port, is let through.
    elsewhere_updates = f"{ELSEWHERE}:{site.updates.port}"
    tunnel_works(site, JUMP, elsewhere_updates, site.updates)
    # plant's policy is enforce: the same kind of request is refused.
    elsewhere_iot = f"{ELSEWHERE}:{site.iot.port}"
    assert status_of(refused(site, PLANT, elsewhere_iot)) == 403
    assert site.iot.connections == 0

    records = {r["client"]: r for r in site.proxy.access_records(expect=2)}
    assert records["jump"]["would_deny"] is True
    assert records["jump"]["policy"] == "updates"
    assert records["jump"]["status"] == 200
    assert records["plant"]["would_deny"] is False
    assert records["plant"]["status"] == 403

    text = site.proxy.metrics_text()
    assert metric(text, "connectproxy_would_deny_total", client="jump", policy="updates") == 1
    assert metric(text, "connectproxy_would_deny_total", client="plant", policy="iot") == 0
    assert 'connectproxy_would_deny_total{client="plant"' not in text


def explain(site: Site, source: str, target: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "connectproxy", "explain"]
    command += ["--config", str(site.proxy.config_path), "--source", source, target]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_names_the_deciding_policy_and_client(site: Site) -> None:
    done = explain(site, PLANT, f"{IOT_HOST}:{site.iot.port}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "allow: host matches .iot.example by policy iot (client plant)"
    )
    done = explain(site, JUMP, f"{ELSEWHERE}:{site.updates.port}")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("allow (report mode: enforce would deny): ")
    assert first.endswith(" by policy updates (client jump)")
    done = explain(site, PLANT, f"{UPDATES_HOST}:{site.updates.port}")
    assert done.returncode == 1
    assert done.stdout.startswith("deny: 403 ") and "(client plant)" in done.stdout
