"""The admin API (SPEC section 7.1) on a real proxy process: authentication, the live tunnel
list, closing by each filter key, the ring of refusals, the token re-read on SIGHUP, and
`reload.close_denied` narrowing a client's policy under load.

Tunnels run through the proxy to the echo origin of tests/support.py; every process is started
by a fixture and stopped by its PID.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import re
import signal
import socket
from pathlib import Path
from typing import Any

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    PASSWORD,
    PASSWORD_HASH,
    OriginServer,
    ProxyProcess,
    Streamer,
    connect_from,
    echo_exchange,
    finish,
    read_head,
    request,
    status_of,
    wait_for_metric,
    wait_until,
)

SENSOR = "sensor.azure-devices.net"
UPDATES = "download.microsoft.com"
TOKEN = "7f3c2a9b0d4e5f6a7b8c9d0e1f2a3b4c5d6e7f80"
RELOADS = "connectproxy_config_reloads_total"


def admin_config(origin_port: int, token_file: Path, **overrides: Any) -> dict[str, Any]:
    """Client `plc` (source 127.0.0.2) is bound to policy `updates`; `local` (the rest of
    127/8) and user `alice` to the default policy, which allows both hosts."""
    config: dict[str, Any] = {
        "allow": {"ports": [443, origin_port], "domains": [".azure-devices.net", UPDATES]},
        "policies": {"updates": {"ports": [origin_port], "domains": [UPDATES]}},
        "clients": [
            {"name": "plc", "networks": ["127.0.0.2/32"], "policies": ["updates"]},
            {"name": "local", "networks": ["127.0.0.0/8"]},
        ],
        "users": [{"name": "alice", "password_hash": PASSWORD_HASH}],
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1", UPDATES: "127.0.0.1"},
            "deny_networks": LOOPBACK_OK_DENY,
        },
        "admin": {"token_file": str(token_file)},
    }
    config.update(overrides)
    return config


def api(
    proxy: ProxyProcess,
    method: str,
    path: str,
    body: object = None,
    authorization: str | None = f"Bearer {TOKEN}",
    raw: bytes | None = None,
) -> tuple[int, http.client.HTTPResponse, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.metrics_port, timeout=10)
    headers = {} if authorization is None else {"Authorization": authorization}
    payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = data
    return response.status, response, decoded


def tunnel(port: int, target: str, source: str = "127.0.0.1", headers: str = "") -> socket.socket:
    """A tunnel to the echo origin from `source`, past its first echoed byte."""
    sock = connect_from(source, port)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode() + b"E")
    head = read_head(sock)
    assert status_of(head) == 200, head
    assert sock.recv(1) == b"E"
    return sock


def alice() -> str:
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def listed(proxy: ProxyProcess) -> list[dict[str, Any]]:
    status, _, rows = api(proxy, "GET", "/api/tunnels")
    assert status == 200, rows
    assert isinstance(rows, list)
    return rows


def ended(sock: socket.socket) -> bool:
    """The proxy closed this tunnel: the next read sees the end (or a reset)."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ---- authentication ----------------------------------------------------------------------------


def test_bearer_and_basic_admin_are_accepted_anything_else_gets_401(proxy: ProxyProcess) -> None:
    assert api(proxy, "GET", "/api/tunnels")[0] == 200
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert api(proxy, "GET", "/api/tunnels", authorization=f"Basic {basic}")[0] == 200
    wrong_user = base64.b64encode(f"root:{TOKEN}".encode()).decode()
    for authorization in (
        None,
        f"Bearer {TOKEN[:-1]}",
        f"Basic {wrong_user}",
        "Bearer ",
        f"Token {TOKEN}",
    ):
        status, response, body = api(proxy, "GET", "/api/tunnels", authorization=authorization)
        assert status == 401, authorization
        challenges = response.headers.get_all("WWW-Authenticate")
        assert challenges is not None
        assert challenges[0].startswith('Basic realm="connectproxy admin"')
        assert challenges[1].startswith('Bearer realm="connectproxy admin"')
        assert "error" in body
    # The built-in endpoints stay open, as before the admin API.
    assert api(proxy, "GET", "/metrics", authorization=None)[0] == 200
    assert api(proxy, "GET", "/healthz", authorization=None)[0] == 200
    assert api(proxy, "GET", "/api/nothing")[0] == 404
    assert TOKEN not in proxy.stderr()


def test_without_a_token_file_nothing_is_served(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    config = admin_config(origin.port, token_file)
    del config["admin"]
    proxy = make_proxy(config)
    for path in ("/api/tunnels", "/api/denials"):
        assert api(proxy, "GET", path)[0] == 404
    assert api(proxy, "POST", "/api/tunnels/close", {"client": "local"})[0] == 404


def test_the_token_file_is_read_again_on_sighup(proxy: ProxyProcess, token_file: Path) -> None:
    new = "N" * 32
    token_file.write_text(new + "\n")
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    assert api(proxy, "GET", "/api/tunnels")[0] == 401
    assert api(proxy, "GET", "/api/tunnels", authorization=f"Bearer {new}")[0] == 200
    # A token too short fails the reload: the running token stays.
    token_file.write_text("short\n")
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="failure")
    assert "admin.token_file" in proxy.stderr()
    assert "short" not in proxy.stderr()
    assert api(proxy, "GET", "/api/tunnels", authorization=f"Bearer {new}")[0] == 200


# ---- listing -----------------------------------------------------------------------------------


def test_list_shows_every_open_tunnel_with_live_byte_counts(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    assert listed(proxy) == []
    busy = Streamer(tunnel(proxy.port, f"{SENSOR}:{origin.port}"))
    quiet = tunnel(proxy.port, f"{UPDATES}:{origin.port}", source="127.0.0.2")
    user = tunnel(proxy.port, f"{SENSOR}:{origin.port}", headers=alice())
    busy.wait_rounds(5)
    rows = listed(proxy)
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert len({row["id"] for row in rows}) == 3
    by_target = {(row["client"], row["target"]): row for row in rows}
    first = by_target[("local", f"{SENSOR}:{origin.port}")]
    assert set(first) == {
        "id", "client", "user", "policy", "client_addr", "target", "server_addr", "upstream",
        "sni", "started", "bytes_client_to_server", "bytes_server_to_client", "idle_s",
    }  # fmt: skip
    assert first["user"] is None and first["policy"] == "default"
    assert first["client_addr"] == "127.0.0.1"
    assert first["server_addr"] == f"127.0.0.1:{origin.port}"
    assert first["upstream"] is None and first["sni"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["started"])
    plc = by_target[("plc", f"{UPDATES}:{origin.port}")]
    assert plc["policy"] == "updates" and plc["client_addr"] == "127.0.0.2"
    assert by_target[("alice", f"{SENSOR}:{origin.port}")]["user"] == "alice"
    # Live: the busy tunnel's counts grow between two listings while it stays open; the
    # quiet one's idle time grows.
    before = first["bytes_client_to_server"], first["bytes_server_to_client"]
    assert before[0] > 0 and before[1] > 0
    busy.wait_rounds(5)
    wait_until(
        lambda: (
            next(r for r in listed(proxy) if r["id"] == first["id"])["bytes_client_to_server"]
            > before[0] + 4 * 16384
        ),
        what="live byte counts",
    )
    later = next(r for r in listed(proxy) if r["id"] == plc["id"])
    assert later["idle_s"] >= plc["idle_s"]
    assert later["bytes_client_to_server"] == 1  # the "E" and nothing since
    busy.stop()
    for sock in (busy.sock, quiet, user):
        finish(sock)
    wait_until(lambda: listed(proxy) == [], what="closed tunnels to leave the list")


# ---- closing -----------------------------------------------------------------------------------


def test_close_by_each_filter_key(proxy: ProxyProcess, origin: OriginServer) -> None:
    port = origin.port
    a = tunnel(proxy.port, f"{SENSOR}:{port}")
    b = tunnel(proxy.port, f"{UPDATES}:{port}", source="127.0.0.2")
    c = tunnel(proxy.port, f"{SENSOR}:{port}", headers=alice())
    d = tunnel(proxy.port, f"{UPDATES}:{port}")
    e = tunnel(proxy.port, f"{SENSOR}:{port}")
    rows = listed(proxy)
    assert len(rows) == 5
    # a and e are alike but for their ids; a opened first, so its id is the smaller.
    a_id = min(r["id"] for r in rows if r["client"] == "local" and SENSOR in r["target"])
    open_ = {"a": a, "b": b, "c": c, "d": d, "e": e}

    def close(body: dict[str, Any], expected: int, names: str) -> None:
        status, _, answer = api(proxy, "POST", "/api/tunnels/close", body)
        assert (status, answer) == (200, {"closed": expected}), body
        for name in names:
            assert ended(open_.pop(name)), (body, name)
        for sock in open_.values():  # the others still carry bytes
            echo_exchange(sock, b"still here")

    close({"policy": "updates"}, 1, "b")
    close({"user": "alice"}, 1, "c")
    close({"host": ".microsoft.com"}, 1, "d")
    close({"id": a_id}, 1, "a")
    close({"client": "local", "host": SENSOR}, 1, "e")
    close({"client": "local"}, 0, "")
    records = proxy.access_records(expect=5)
    assert len(records) == 5
    for record in records:
        assert record["outcome"] == "established" and record["status"] == 200
        assert record["error"] == "closed by admin"
    assert "tunnels closed by admin" in proxy.stderr()


def test_bad_close_requests_get_400_and_close_nothing(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    sock = tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    for body, says in (
        ({}, "empty filter"),
        ({"client": None}, "empty filter"),
        ({"clinet": "local"}, "unknown filter key"),
        ({"host": "*x*"}, "domain pattern"),
        (["local"], "JSON object"),
    ):
        status, _, answer = api(proxy, "POST", "/api/tunnels/close", body)
        assert status == 400, body
        assert says in answer["error"]
    status, _, answer = api(proxy, "POST", "/api/tunnels/close", raw=b"{client: local}")
    assert status == 400 and "not JSON" in answer["error"]
    status, _, _ = api(proxy, "POST", "/api/tunnels/close", raw=b"{" + b" " * 20000 + b"}")
    assert status == 413
    assert api(proxy, "GET", "/api/tunnels/close")[0] == 405
    assert api(proxy, "POST", "/api/tunnels", {"client": "local"})[0] == 405
    echo_exchange(sock, b"untouched")
    assert len(listed(proxy)) == 1
    finish(sock)


# ---- refusals ----------------------------------------------------------------------------------


def test_denials_are_the_refused_access_records_newest_first(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    assert api(proxy, "GET", "/api/denials")[2] == []
    assert request(proxy.port, f"first.example.org:{origin.port}")[0] == 403
    assert request(proxy.port, f"{UPDATES}:{origin.port}")[0] == 200
    assert request(proxy.port, f"{SENSOR}:1")[0] == 403  # port not allowed
    sock = connect_from("127.0.0.1", proxy.port)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert status_of(read_head(sock)) == 405
    sock.close()
    wait_until(lambda: len(api(proxy, "GET", "/api/denials")[2]) == 3, what="three refusals")
    denials = api(proxy, "GET", "/api/denials")[2]
    assert [d["outcome"] for d in denials] == ["method_not_allowed", "forbidden", "forbidden"]
    assert denials[2]["target"] == f"first.example.org:{origin.port}"
    records = proxy.access_records(expect=4)
    refused = [r for r in records if r["outcome"] != "established"]
    assert sorted(json.dumps(d, sort_keys=True) for d in denials) == sorted(
        json.dumps(r, sort_keys=True) for r in refused
    )


# ---- reload.close_denied ----------------------------------------------------------------------


def test_close_denied_ends_only_the_tunnels_the_new_policy_refuses(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    config = admin_config(origin.port, token_file, reload={"close_denied": True})
    config["policies"]["updates"]["domains"] = [UPDATES, SENSOR]
    proxy = make_proxy(config)
    port = origin.port
    removed = [
        Streamer(tunnel(proxy.port, f"{SENSOR}:{port}", source="127.0.0.2")) for _ in range(3)
    ]
    kept = [
        Streamer(tunnel(proxy.port, f"{UPDATES}:{port}", source="127.0.0.2")),
        Streamer(tunnel(proxy.port, f"{SENSOR}:{port}")),
        Streamer(tunnel(proxy.port, f"{UPDATES}:{port}")),
        Streamer(tunnel(proxy.port, f"{SENSOR}:{port}", headers=alice())),
    ]
    for streamer in removed + kept:
        streamer.wait_rounds(3)

    narrowed = copy.deepcopy(proxy.config)
    narrowed["policies"]["updates"]["domains"] = [UPDATES]
    proxy.write_config(narrowed)
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    for streamer in removed:
        wait_until(lambda s=streamer: s.error is not None, what="a refused tunnel to end")  # type: ignore[misc]
    for streamer in kept:
        streamer.wait_rounds(10)  # bytes keep moving on every other tunnel
    assert len(listed(proxy)) == len(kept)
    for streamer in kept:
        streamer.stop()
        finish(streamer.sock)
    records = proxy.access_records(expect=7)
    by_error = sorted((r["client"], r["target"], r["error"]) for r in records)
    assert by_error.count(("plc", f"{SENSOR}:{port}", "closed by reload")) == 3
    assert all(r["error"] is None for r in records if r["error"] != "closed by reload")
    assert all(r["outcome"] == "established" for r in records)


def test_close_denied_ends_the_tunnels_of_a_removed_user(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    config = admin_config(origin.port, token_file, reload={"close_denied": True})
    proxy = make_proxy(config)
    user = tunnel(proxy.port, f"{SENSOR}:{origin.port}", headers=alice())
    other = tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    narrowed = copy.deepcopy(proxy.config)
    # Another user stays, so credentials are still checked (with none left they would be
    # ignored, and the network alone would admit the client again).
    narrowed["users"] = [{"name": "bob", "password_hash": PASSWORD_HASH}]
    proxy.write_config(narrowed)
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    assert ended(user)
    echo_exchange(other, b"kept")
    finish(other)


def test_without_close_denied_a_reload_leaves_open_tunnels_alone(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    streamer = Streamer(tunnel(proxy.port, f"{UPDATES}:{origin.port}", source="127.0.0.2"))
    streamer.wait_rounds(3)
    narrowed = copy.deepcopy(proxy.config)
    narrowed["policies"]["updates"]["domains"] = [SENSOR]
    proxy.write_config(narrowed)
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    streamer.wait_rounds(5)
    assert len(listed(proxy)) == 1
    streamer.stop()
    finish(streamer.sock)
