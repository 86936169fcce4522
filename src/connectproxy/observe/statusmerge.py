"""The status page of a `--workers N` proxy: each worker's snapshot as JSON, and the
supervisor's sum of them (docs/operations.md, "The status page").

Every worker holds its own tunnels, connections and refusals; the supervisor holds none. So a
worker sends the figures it would render (`snapshot_json`), and the supervisor reads them back
(`snapshot_from_json`), adds them up (`merge`) and renders one page. What belongs to the whole
proxy rather than a worker (health, start, config file, last reload) is the supervisor's own.

Pure: bytes and values in, values out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any

from connectproxy.observe.refusals import RefusalCount
from connectproxy.observe.statuspage import (
    ClientTunnels,
    ReloadState,
    StatusSnapshot,
    UpstreamState,
)

__all__ = ["merge", "snapshot_from_json", "snapshot_json"]


def snapshot_json(snap: StatusSnapshot) -> bytes:
    return json.dumps(asdict(snap)).encode()


def snapshot_from_json(body: bytes) -> StatusSnapshot:
    """Raises ValueError (or KeyError, TypeError) for a body that is not a snapshot."""
    data: dict[str, Any] = json.loads(body)
    reload = data["reload"]
    workers = data.get("workers")
    return StatusSnapshot(
        now=float(data["now"]),
        ready=bool(data["ready"]),
        draining=bool(data["draining"]),
        version=str(data["version"]),
        compiled=bool(data["compiled"]),
        started=float(data["started"]),
        config_source=str(data["config_source"]),
        reload=None if reload is None else ReloadState(**reload),
        connections=int(data["connections"]),
        tunnels=tuple(ClientTunnels(**row) for row in data["tunnels"]),
        refusals=tuple(RefusalCount(**row) for row in data["refusals"]),
        refusal_window_s=float(data["refusal_window_s"]),
        upstream_strategy=data["upstream_strategy"],
        upstreams=tuple(UpstreamState(**row) for row in data["upstreams"]),
        workers=None if workers is None else (int(workers[0]), int(workers[1])),
    )


def merge(own: StatusSnapshot, parts: Sequence[StatusSnapshot], total: int) -> StatusSnapshot:
    """`own` (the supervisor's: health, start, config, reload) with the figures of `parts`, the
    snapshots of the workers that answered, out of `total` workers. Tunnels and refusals are
    summed by client; an upstream counts every worker's failures and shows the longest
    cool-down any worker has left."""
    return replace(
        own,
        draining=own.draining or any(part.draining for part in parts),
        connections=sum(part.connections for part in parts),
        tunnels=_tunnels(row for part in parts for row in part.tunnels),
        refusals=_refusals(row for part in parts for row in part.refusals),
        refusal_window_s=parts[0].refusal_window_s if parts else own.refusal_window_s,
        upstream_strategy=next((p.upstream_strategy for p in parts if p.upstreams), None),
        upstreams=_upstreams(part.upstreams for part in parts),
        workers=(len(parts), total),
    )


def _tunnels(rows: Iterable[ClientTunnels]) -> tuple[ClientTunnels, ...]:
    sums: dict[str, ClientTunnels] = {}
    for row in rows:
        seen = sums.get(row.client)
        sums[row.client] = (
            row
            if seen is None
            else ClientTunnels(
                row.client,
                seen.count + row.count,
                seen.bytes_client_to_server + row.bytes_client_to_server,
                seen.bytes_server_to_client + row.bytes_server_to_client,
                max(seen.oldest_s, row.oldest_s),
            )
        )
    # The order of statuspage.tunnels_by_client: most tunnels first, then by name.
    return tuple(sorted(sums.values(), key=lambda row: (-row.count, row.client)))


def _refusals(rows: Iterable[RefusalCount]) -> tuple[RefusalCount, ...]:
    sums: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row.who, row.outcome, row.reason)
        sums[key] = sums.get(key, 0) + row.count
    merged = [RefusalCount(who, outcome, reason, n) for (who, outcome, reason), n in sums.items()]
    # The order of RecentRefusals.counts: most refused first, then by name.
    merged.sort(key=lambda row: (-row.count, row.who, row.outcome, row.reason))
    return tuple(merged)


def _upstreams(lists: Iterable[tuple[UpstreamState, ...]]) -> tuple[UpstreamState, ...]:
    merged: dict[str, UpstreamState] = {}  # in the config's order, as each worker lists them
    for rows in lists:
        for row in rows:
            seen = merged.get(row.name)
            merged[row.name] = (
                row
                if seen is None
                else UpstreamState(
                    row.name, max(seen.cooling_s, row.cooling_s), seen.failures + row.failures
                )
            )
    return tuple(merged.values())
