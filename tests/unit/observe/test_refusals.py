"""The ring of recent refusals behind `GET /api/denials`: bounded, newest first, each entry its
JSON access-log line."""

from __future__ import annotations

import json
from pathlib import Path

from connectproxy.config.model import Log
from connectproxy.observe.logs import REFUSALS_KEPT, AccessLog, AccessRecord


def refused(i: int) -> AccessRecord:
    return AccessRecord(
        start=1_700_000_000.0 + i / 10,
        client_addr="192.0.2.7",
        client_port=40000 + i,
        client="plc-7",
        target=f"host{i}.example.com:443",
        outcome="forbidden",
        status=403,
        error="destination not allowed",
        duration_s=0.001,
    )


def test_ring_keeps_the_last_refusals_newest_first_and_skips_tunnels(tmp_path: Path) -> None:
    log = AccessLog(Log(access_log=str(tmp_path / "access.log")))
    assert json.loads(log.refusals_json()) == []
    for i in range(REFUSALS_KEPT + 5):
        log.write(refused(i))
        if i % 100 == 0:
            tunnel = refused(i)
            tunnel.outcome, tunnel.status = "established", 200
            log.write(tunnel)
    log.close()
    denials = json.loads(log.refusals_json())
    assert REFUSALS_KEPT == 1000
    assert len(denials) == REFUSALS_KEPT
    assert [d["client_port"] for d in denials] == [
        40000 + i for i in range(REFUSALS_KEPT + 4, 4, -1)
    ]
    assert all(d["outcome"] == "forbidden" for d in denials)
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert denials[0] == lines[-1]  # the same fields and values as the access log
    assert denials[0]["ts"] == "2023-11-14T22:15:00.400Z"


def test_ring_also_fills_with_the_squid_log_format(tmp_path: Path) -> None:
    log = AccessLog(Log(access_log=str(tmp_path / "a.log"), access_format="squid"))
    log.write(refused(1))
    log.close()
    assert json.loads(log.refusals_json())[0]["target"] == "host1.example.com:443"
