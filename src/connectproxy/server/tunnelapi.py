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
from json.encoder import encode_basestring_ascii as _json_string

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
        # Per open tunnel: its SNI when formatted, and the JSON of its fixed fields.
        self._fixed: dict[int, str] = {}
        self._stamps: dict[int, str] = {}  # seconds formatted during one listing

    def install(self, routes: AdminRoutes) -> None:
        routes.add("GET", "/api/tunnels", self.list_tunnels)
        routes.add("POST", "/api/tunnels/close", self.close_tunnels)
        routes.add("GET", "/api/denials", self.denials)

    def list_tunnels(self, request: OpsRequest) -> OpsResponse:
        """The JSON is written out by hand, row by row: the fields fixed for a tunnel's life are
        formatted once, at the first listing that sees it, and kept (`_fixed`); each listing
        adds only the three figures that move. That is what keeps 5,000 rows to a few
        milliseconds of the loop's time, where building dictionaries for `json.dumps` cost
        ten times more."""
        now = self.now()
        fixed = self._fixed
        rows: list[str] = []
        seen: dict[int, str] = {}
        for tunnel_id, active in self.tunnels().active.items():
            tunnel = active.tunnel
            known = fixed.get(tunnel_id)
            if known is None:
                known = _fixed_fields(active, self._stamps)
            seen[tunnel_id] = known
            idle = now - tunnel.last_active
            rows.append(
                f"{known},"
                f'"bytes_client_to_server":{tunnel.bytes_client_to_server},'
                f'"bytes_server_to_client":{tunnel.bytes_server_to_client},'
                f'"idle_s":{round(idle, 3) if idle > 0.0 else 0.0}}}'
            )
        self._fixed = seen  # closed tunnels drop out
        self._stamps.clear()
        body = ("[" + ",".join(rows) + "]").encode()
        return OpsResponse(200, "application/json", body)

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


def _text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _fixed_fields(active: OpenTunnel, stamps: dict[int, str]) -> str:
    """The start of a tunnel's JSON object, up to its byte counts: what never changes while it
    is open. The SNI is among them: a tunnel starts only after the TLS guard has read the
    ClientHello (SPEC section 5.1)."""
    rec = active.rec
    sni = rec.hello.sni if rec.hello is not None else None
    second = int(active.started)
    prefix = stamps.get(second)
    if prefix is None:
        prefix = stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    started = f"{prefix}.{int((active.started - second) * 1000):03d}Z"
    return (
        f'{{"id":{active.id},"client":{_text(rec.client)},"user":{_text(rec.user)},'
        f'"policy":{_text(rec.policy)},"client_addr":{_json_string(rec.client_addr)},'
        f'"target":{_text(rec.target)},"server_addr":{_text(rec.server_addr)},'
        f'"upstream":{_text(rec.upstream)},"sni":{_text(sni)},"started":"{started}"'
    )
