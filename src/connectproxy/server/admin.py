"""The admin routes on the metrics listener (SPEC section 7.1): authentication and the route
table that every admin endpoint plugs into.

The operations listener (observe/ops.py) asks `AdminRoutes` about every request its built-in
paths do not answer. While the running config has no `admin.token_file` the answer is always
"not mine", so the listener says 404 exactly as it did before the admin API existed: nothing is
served without a token. With one, a request to a registered path must carry
`Authorization: Bearer TOKEN` or Basic credentials `admin:TOKEN`; otherwise it gets 401 with a
challenge for each scheme, Basic first, so a browser offers its login dialog.

The token is asked for on every request (`token()`, the running config's), so a SIGHUP that
loads a new token file takes effect for the next request without anything to restart.
Comparisons are of bytes with `hmac.compare_digest`, whose time does not depend on where the
first difference is.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

from connectproxy.observe.ops import OpsRequest, OpsResponse
from connectproxy.wire.http import parse_basic_credentials

__all__ = ["ADMIN_USER", "CHALLENGES", "AdminRoutes", "RouteHandler", "json_response"]

ADMIN_USER = "admin"
REALM = "connectproxy admin"
CHALLENGES = (
    ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
    ("WWW-Authenticate", f'Bearer realm="{REALM}"'),
)

# Called only for an authenticated request to its path and method. The supervisor of `--workers`
# answers by asking its workers (process/adminfanout.py), hence the awaitable.
RouteHandler = Callable[[OpsRequest], OpsResponse | Awaitable[OpsResponse]]


def json_response(status: int, value: object) -> OpsResponse:
    return OpsResponse(status, "application/json", json.dumps(value).encode())


def json_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> OpsResponse:
    """Errors of the admin API as JSON, {"error": "..."}, for scripts and the CLI alike."""
    return OpsResponse(status, "application/json", json.dumps({"error": message}).encode(), headers)


class AdminRoutes:
    """Admin paths by path and method, each behind the token; an `observe.ops.Handler`.

    Other endpoints (the status page) plug in with `add`, and use `authenticated` when they
    need to know about a request without answering it."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self.token = token
        self._routes: dict[str, dict[str, RouteHandler]] = {}

    def add(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve `method` (GET also answers HEAD) on `path` with `handler`, once authenticated."""
        methods = self._routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} is served already")
        methods[method] = handler

    def authenticated(self, request: OpsRequest) -> bool:
        """Whether `request` carries the running config's admin token, as Bearer or as Basic
        `admin:TOKEN`. False whenever no token is configured."""
        token = self.token()
        if token is None:
            return False
        value = request.headers.get("authorization")
        if value is None:
            return False
        scheme, _, rest = value.strip(" \t").partition(" ")
        if scheme.lower() == "bearer":
            offered = rest.strip(" \t")
            return hmac.compare_digest(offered.encode(), token.encode())
        parsed = parse_basic_credentials(value)
        if parsed is None:
            return False
        user, password = parsed
        # Both parts in one comparison, so a wrong user name takes as long as a wrong token.
        offered_pair = f"{user}:{password}".encode()
        return hmac.compare_digest(offered_pair, f"{ADMIN_USER}:{token}".encode())

    def __call__(self, request: OpsRequest) -> OpsResponse | Awaitable[OpsResponse] | None:
        if self.token() is None:
            return None  # admin API off: the listener answers 404
        methods = self._routes.get(request.path)
        if methods is None:
            return None
        if not self.authenticated(request):
            return json_error(
                401, "admin token required: Authorization Bearer or Basic admin:TOKEN", CHALLENGES
            )
        method = "GET" if request.method == "HEAD" and "HEAD" not in methods else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return json_error(405, f"{request.method} is not served here", (("Allow", allowed),))
        return handler(request)
