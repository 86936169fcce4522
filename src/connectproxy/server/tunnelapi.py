"""The admin API's tunnel endpoints (SPEC section 7.1): list the open tunnels, close some, and
show the last refusals.

They run on the event loop that carries the tunnels, between two readiness callbacks, so each
answer is built in one go without awaiting anything: a list of 5,000 tunnels is a few
milliseconds of Python, less than a scrape of /metrics, and never sees a tunnel half-updated.
Byte counts are read from the tunnels themselves, so they are live, not the every-two-seconds
figures the metrics get.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from connectproxy.observe.logs import AccessLog, get_logger
from connectproxy.observe.ops import OpsRequest, OpsResponse
from connectproxy.server.admin import AdminRoutes, json_error, json_response
from connectproxy.server.tunnelfilter import FilterError, TunnelFilter, parse_filter
from connectproxy.server.tunnels import OpenTunnel, Tunnels

__all__ = ["CLOSED_BY_ADMIN", "TunnelApi"]

CLOSED_BY_ADMIN = "closed by admin"


class TunnelApi:
    def __init__(
        self, tunnels: Callable[[], Tunnels], access_log: AccessLog, now: Callable[[], float]
    ) -> None:
        """`tunnels` gives the server's registry; `now` is the loop's clock, the one a
        tunnel's `last_active` is read on."""
        self.tunnels = tunnels
        self.access_log = access_log
        self.now = now
        self.log = get_logger()

    def install(self, routes: AdminRoutes) -> None:
        routes.add("GET", "/api/tunnels", self.list_tunnels)
        routes.add("POST", "/api/tunnels/close", self.close_tunnels)
        routes.add("GET", "/api/denials", self.denials)

    def list_tunnels(self, request: OpsRequest) -> OpsResponse:
        now = self.now()
        stamps: dict[int, str] = {}  # tunnels opened in the same second share the formatting
        rows = []
        for active in self.tunnels().active.values():
            rec, tunnel = active.rec, active.tunnel
            second = int(active.started)
            prefix = stamps.get(second)
            if prefix is None:
                prefix = stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            rows.append(
                {
                    "id": active.id,
                    "client": rec.client,
                    "user": rec.user,
                    "policy": rec.policy,
                    "client_addr": rec.client_addr,
                    "target": rec.target,
                    "server_addr": rec.server_addr,
                    "upstream": rec.upstream,
                    "sni": rec.sni,
                    "started": f"{prefix}.{int((active.started - second) * 1000):03d}Z",
                    "bytes_client_to_server": tunnel.bytes_client_to_server,
                    "bytes_server_to_client": tunnel.bytes_server_to_client,
                    "idle_s": round(max(0.0, now - tunnel.last_active), 3),
                }
            )
        return json_response(200, rows)

    def close_tunnels(self, request: OpsRequest) -> OpsResponse:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return json_error(400, f"the body is not JSON: {exc}")
        try:
            wanted = parse_filter(data)
        except FilterError as exc:
            return json_error(400, str(exc))
        closed = self.tunnels().close_matching(_matcher(wanted), CLOSED_BY_ADMIN)
        self.log.info("tunnels closed by admin", filter=data, closed=closed)
        return json_response(200, {"closed": closed})

    def denials(self, request: OpsRequest) -> OpsResponse:
        return OpsResponse(200, "application/json", self.access_log.refusals_json().encode())


def _matcher(wanted: TunnelFilter) -> Callable[[OpenTunnel], bool]:
    def matches(active: OpenTunnel) -> bool:
        rec, target = active.rec, active.admission.target
        return wanted.matches(active.id, rec.client, rec.user, rec.policy, target.host, target.ip)

    return matches
