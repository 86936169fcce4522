"""The admin route table and its authentication, without sockets (the live checks are in
tests/integration/process/test_admin_api.py)."""

from __future__ import annotations

import base64
import hmac

import pytest

from connectproxy.observe.ops import OpsRequest, OpsResponse
from connectproxy.server.admin import AdminRoutes

TOKEN = "t" * 40


def ask(routes: AdminRoutes, authorization: str | None, method: str = "GET") -> OpsResponse | None:
    headers = {} if authorization is None else {"authorization": authorization}
    answer = routes(OpsRequest(method, "/api/thing", headers=headers))
    assert answer is None or isinstance(answer, OpsResponse)  # these routes answer at once
    return answer


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def routes_with(token: str | None) -> AdminRoutes:
    routes = AdminRoutes(lambda: token)
    routes.add("GET", "/api/thing", lambda request: OpsResponse(200, "text/plain", b"thing"))
    return routes


def test_without_a_token_nothing_is_served() -> None:
    routes = routes_with(None)
    assert ask(routes, f"Bearer {TOKEN}") is None  # the listener answers 404
    assert not routes.authenticated(OpsRequest("GET", "/", headers={"authorization": "Bearer "}))


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}", f"bearer   {TOKEN}", basic("admin", TOKEN), f"  {basic('admin', TOKEN)}"],
)
def test_bearer_or_basic_admin_is_accepted(authorization: str) -> None:
    answer = ask(routes_with(TOKEN), authorization)
    assert answer is not None and answer.status == 200 and answer.body == b"thing"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Token {TOKEN}",
        basic("root", TOKEN),
        basic("admin", TOKEN[:-1]),
        basic("admin", TOKEN + "x"),
        "Basic !!!",
        f"Bearer {TOKEN[:-1]}é",
    ],
)
def test_anything_else_gets_401_with_both_challenges(authorization: str | None) -> None:
    answer = ask(routes_with(TOKEN), authorization)
    assert answer is not None and answer.status == 401
    challenges = [value for name, value in answer.headers if name == "WWW-Authenticate"]
    assert challenges[0].startswith('Basic realm="connectproxy admin"')
    assert challenges[1].startswith("Bearer")


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what admin.py calls
    routes = routes_with(TOKEN)
    ask(routes, f"Bearer {TOKEN}")
    ask(routes, basic("admin", "wrong"))
    assert seen == [(TOKEN.encode(), TOKEN.encode()), (b"admin:wrong", f"admin:{TOKEN}".encode())]


def test_the_token_is_asked_for_on_every_request() -> None:
    current = {"token": TOKEN}
    routes = AdminRoutes(lambda: current["token"])
    routes.add("GET", "/api/thing", lambda request: OpsResponse(200, "text/plain", b""))
    assert ask(routes, f"Bearer {TOKEN}").status == 200  # type: ignore[union-attr]
    current["token"] = "n" * 32
    assert ask(routes, f"Bearer {TOKEN}").status == 401  # type: ignore[union-attr]
    assert ask(routes, "Bearer " + "n" * 32).status == 200  # type: ignore[union-attr]


def test_methods_unknown_paths_and_head() -> None:
    routes = routes_with(TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert routes(OpsRequest("GET", "/api/other", headers=auth)) is None
    wrong = routes(OpsRequest("DELETE", "/api/thing", headers=auth))
    assert isinstance(wrong, OpsResponse) and wrong.status == 405
    assert ("Allow", "GET, HEAD") in wrong.headers
    head = routes(OpsRequest("HEAD", "/api/thing", headers=auth))
    assert isinstance(head, OpsResponse) and head.status == 200
    # Unauthenticated, a wrong method still gets 401: nothing is said about the route.
    refused = routes(OpsRequest("DELETE", "/api/thing"))
    assert isinstance(refused, OpsResponse) and refused.status == 401
    with pytest.raises(ValueError, match="served already"):
        routes.add("GET", "/api/thing", lambda request: OpsResponse(200, "text/plain", b""))
