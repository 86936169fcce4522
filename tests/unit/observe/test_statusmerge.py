"""The status page of `--workers N`: a worker's snapshot survives JSON, and the supervisor's sum
of several (the live page is checked in tests/integration/process/test_admin_workers.py)."""

from __future__ import annotations

from connectproxy.observe.refusals import RefusalCount
from connectproxy.observe.statusmerge import merge, snapshot_from_json, snapshot_json
from connectproxy.observe.statuspage import (
    ClientTunnels,
    ReloadState,
    StatusSnapshot,
    UpstreamState,
    render,
)


def snapshot(**changes: object) -> StatusSnapshot:
    fields: dict[str, object] = {
        "now": 1_700_000_100.0,
        "ready": True,
        "draining": False,
        "version": "1.0",
        "compiled": True,
        "started": 1_700_000_000.0,
        "config_source": "/etc/connectproxy/connectproxy.yaml",
        "reload": None,
        "connections": 0,
        "tunnels": (),
        "refusals": (),
        "refusal_window_s": 3600.0,
        "upstream_strategy": None,
        "upstreams": (),
    }
    fields.update(changes)
    return StatusSnapshot(**fields)  # type: ignore[arg-type]


def test_a_snapshot_survives_json() -> None:
    snap = snapshot(
        reload=ReloadState(1_700_000_050.0, False, "bad key"),
        connections=3,
        tunnels=(ClientTunnels("plc", 2, 10, 20, 5.5),),
        refusals=(RefusalCount("10.0.0.9", "forbidden", "-", 4),),
        upstream_strategy="failover",
        upstreams=(UpstreamState("a", 0.0, 1),),
        workers=(1, 2),
    )
    assert snapshot_from_json(snapshot_json(snap)) == snap


def test_merge_sums_by_client_and_keeps_the_supervisors_own_fields() -> None:
    own = snapshot(reload=ReloadState(1_700_000_090.0, True, None), upstream_strategy="failover")
    one = snapshot(
        started=5.0,
        connections=4,
        tunnels=(ClientTunnels("plc", 3, 100, 200, 30.0), ClientTunnels("-", 1, 1, 1, 1.0)),
        refusals=(RefusalCount("x", "forbidden", "-", 2),),
        upstream_strategy="failover",
        upstreams=(UpstreamState("a", 0.0, 1), UpstreamState("b", 4.0, 2)),
    )
    two = snapshot(
        draining=True,
        connections=1,
        tunnels=(ClientTunnels("plc", 1, 5, 6, 90.0), ClientTunnels("hmi", 2, 7, 8, 2.0)),
        refusals=(RefusalCount("x", "forbidden", "-", 3), RefusalCount("y", "bad", "-", 9)),
        upstream_strategy="failover",
        upstreams=(UpstreamState("a", 10.0, 5), UpstreamState("b", 0.0, 0)),
    )
    summed = merge(own, [one, two], 3)
    assert summed.started == own.started and summed.reload == own.reload
    assert summed.draining and summed.connections == 5
    assert summed.tunnels == (
        ClientTunnels("plc", 4, 105, 206, 90.0),
        ClientTunnels("hmi", 2, 7, 8, 2.0),
        ClientTunnels("-", 1, 1, 1, 1.0),
    )
    assert summed.refusals == (
        RefusalCount("y", "bad", "-", 9),
        RefusalCount("x", "forbidden", "-", 5),
    )
    assert summed.upstreams == (UpstreamState("a", 10.0, 6), UpstreamState("b", 4.0, 2))
    assert summed.workers == (2, 3)
    page = render(summed).decode()
    assert "2 of 3 answered" in page and "leave out" in page


def test_no_worker_answered() -> None:
    summed = merge(snapshot(), [], 2)
    assert summed.tunnels == () and summed.connections == 0 and summed.workers == (0, 2)
    assert "0 of 2 answered" in render(summed).decode()
