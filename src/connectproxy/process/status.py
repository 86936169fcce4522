"""`GET /status`: the live figures of one running proxy, gathered into a snapshot and rendered
by `observe/statuspage.py` (docs/operations.md, "The status page").

It is an admin route (SPEC section 7.1): served only with `admin.token_file`, behind the same
token as the admin API, so a browser without it gets the 401 with a Basic challenge and a
person logs in as `admin` with the token. Gathering walks the open tunnels once on the event
loop, like `/api/tunnels`, so the page shows one consistent moment and never a tunnel
half-updated; its byte counts are the tunnels' own, live, not the metrics' two-second figures.

The refusals come from the access log: every record it writes with an outcome other than
`established` is counted in the last hour's buckets (`observe/refusals.py`), so the table is
complete whether or not anyone was looking at the page when they happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from connectproxy import __version__, compiled
from connectproxy.observe.logs import AccessRecord
from connectproxy.observe.metrics import Metrics
from connectproxy.observe.ops import OpsRequest, OpsResponse
from connectproxy.observe.refusals import RecentRefusals, who_of
from connectproxy.observe.statuspage import (
    CONTENT_TYPE,
    HEADERS,
    ReloadState,
    StatusSnapshot,
    UpstreamState,
    render,
    tunnels_by_client,
)
from connectproxy.server.admin import AdminRoutes
from connectproxy.server.server import Server

PATH = "/status"


class StatusPage:
    """What the page needs that only the running process knows: its start, its last reload,
    the refusals seen; the rest is read from the server when the page is asked for."""

    def __init__(
        self,
        server: Server,
        metrics: Metrics,
        ready: Callable[[], bool],
        refusals: RecentRefusals | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.ready = ready
        self.refusals = refusals or RecentRefusals()
        self.wall_clock = wall_clock
        self.started = wall_clock()
        self.compiled = compiled()
        self.last_reload: ReloadState | None = None

    def install(self, routes: AdminRoutes) -> None:
        routes.add("GET", PATH, self.answer)

    def refused(self, rec: AccessRecord) -> None:
        """The access log's hook for a record of any outcome but `established`."""
        self.refusals.add(
            who_of(rec.client, rec.user, rec.client_addr), rec.outcome or "-", rec.error or "-"
        )

    def reloaded(self, ok: bool, error: str | None = None) -> None:
        self.last_reload = ReloadState(self.wall_clock(), ok, error)

    def answer(self, request: OpsRequest) -> OpsResponse:
        return OpsResponse(200, CONTENT_TYPE, render(self.snapshot()), HEADERS)

    def snapshot(self) -> StatusSnapshot:
        now = self.wall_clock()
        server = self.server
        tunnels = tunnels_by_client(
            (
                (
                    active.rec.client,
                    active.tunnel.bytes_client_to_server,
                    active.tunnel.bytes_server_to_client,
                    active.started,
                )
                for active in server.tunnels.active.values()
            ),
            now,
        )
        upstream = server.config.upstream
        upstreams: tuple[UpstreamState, ...] = ()
        chain = server.loaded.upstreams
        if chain is not None:
            failures = self.metrics.upstream_failure_counts()
            clock = chain.clock()
            upstreams = tuple(
                UpstreamState(
                    proxy.name,
                    max(0.0, chain.cooling_until.get(proxy.name, 0.0) - clock),
                    failures.get(proxy.name, 0),
                )
                for proxy in chain.proxies
            )
        return StatusSnapshot(
            now=now,
            ready=self.ready(),
            draining=server.draining,
            version=__version__,
            compiled=self.compiled,
            started=self.started,
            config_source=server.config.source,
            reload=self.last_reload,
            connections=server.connections,
            tunnels=tunnels,
            refusals=tuple(self.refusals.counts()),
            refusal_window_s=self.refusals.window,
            upstream_strategy=upstream.strategy if upstream is not None and upstreams else None,
            upstreams=upstreams,
        )
