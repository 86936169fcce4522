"""The proxy as a real process, on real sockets, with real clients: every status of SPEC section 4
and every tunnel promise of section 5."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    PASSWORD,
    PASSWORD_HASH,
    SENSOR,
    HTTPSOrigin,
    OriginServer,
    basic,
    config_for,
    connect_raw,
    curl,
    open_tunnel_with_early_data,
    pattern,
    request,
    status_of,
)


def users_only(port: int) -> dict[str, Any]:
    """Nobody admitted by address: only the Basic user `sensor2`."""
    return config_for(port, clients=[], users=[{"name": "sensor2", "password_hash": PASSWORD_HASH}])


def recv_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


# ---- the happy path with real clients ---------------------------------------------------------


def test_curl_through_proxy_to_tls_origin(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    proxy = make_proxy(config_for(https_origin.port))
    result = curl(
        "-x",
        f"http://127.0.0.1:{proxy.port}",
        "--cacert",
        str(ca_file),
        f"https://{SENSOR}:{https_origin.port}/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the origin\n"
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established"
    assert record["status"] == 200
    assert record["client"] == "local"
    assert record["target"] == f"{SENSOR}:{https_origin.port}"
    assert record["server_addr"] == f"127.0.0.1:{https_origin.port}"
    assert record["bytes_client_to_server"] > 0 and record["bytes_server_to_client"] > 0
    for key in (
        "ts",
        "client_addr",
        "client_port",
        "user",
        "upstream",
        "duration_s",
        "connect_s",
        "error",
    ):
        assert key in record
    assert record["ts"].endswith("Z")


def test_curl_with_proxy_user(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    proxy = make_proxy(users_only(https_origin.port))
    url = f"https://{SENSOR}:{https_origin.port}/"
    common = ["-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(ca_file)]
    ok = curl(*common, "--proxy-user", f"sensor2:{PASSWORD}", url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello from the origin\n"
    proxy.access_records(expect=1)  # logged before the next request: records are read in order
    bad = curl(
        *common, "--proxy-user", "sensor2:wrong", "-o", "/dev/null", "-w", "%{http_code}", url
    )
    assert "407" in bad.stdout + bad.stderr
    records = proxy.access_records(expect=2)
    assert [r["outcome"] for r in records] == ["established", "auth_failed"]
    assert records[0]["user"] == "sensor2" and records[0]["client"] == "sensor2"
    log_text = (proxy.workdir / "access.log").read_text() + proxy.stderr()
    assert PASSWORD not in log_text and "wrong" not in log_text
    assert base64.b64encode(f"sensor2:{PASSWORD}".encode()).decode() not in log_text


def test_ipv6_listener_and_origin(make_proxy: ProxyFactory) -> None:
    with OriginServer("::1") as origin6:
        config = config_for(
            origin6.port, allow={"ports": [origin6.port], "domains": [], "networks": ["::1/128"]}
        )
        proxy = make_proxy(config)
        sock = open_tunnel_with_early_data(proxy.port, f"[::1]:{origin6.port}", extra=b"E")
        assert sock.recv(10) == b"E"
        sock.close()


# ---- every status of section 4 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\nHost: x\n\n", 400),
        (b"CONNECT sensor.azure-devices.net:443 HTTP/2.0\r\n\r\n", 400),
        (b"CONNECT evil.com@sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT sensor.azure-devices.net:0443 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
        (
            b"CONNECT s.azure-devices.net:443 HTTP/1.1\r\nProxy-Authorization: Basic YTpi\r\n"
            b"Proxy-Authorization: Basic YTpi\r\n\r\n",
            400,
        ),
        (b"GET http://sensor.azure-devices.net/ HTTP/1.1\r\n\r\n", 405),
    ],
)
def test_bad_requests(
    make_proxy: ProxyFactory, origin: OriginServer, head: bytes, status: int
) -> None:
    proxy = make_proxy(config_for(origin.port))
    sock, data = connect_raw(proxy.port, head)
    assert status_of(data) == status, data
    assert b"Connection: close" in data and b"Content-Type: text/plain" in data
    if status == 405:
        assert b"Allow: CONNECT" in data
    assert sock.recv(10) == b""  # and the proxy closed
    assert origin.connections == 0


def test_request_too_large_is_431(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port, limits={"max_request_bytes": 1024}))
    head = b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
    _, data = connect_raw(proxy.port, head)
    assert status_of(data) == 431


def test_handshake_timeout_is_408(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port, timeouts={"handshake": 0.5}))
    began = time.monotonic()
    _, data = connect_raw(proxy.port, b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\n")
    assert status_of(data) == 408
    assert 0.4 < time.monotonic() - began < 3
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "handshake_timeout"


def test_auth_required_is_407_with_challenge(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(users_only(origin.port))
    status, data = request(proxy.port, f"{SENSOR}:{origin.port}")
    assert status == 407
    assert b'Proxy-Authenticate: Basic realm="connectproxy"' in data


def test_wrong_credentials_refused_even_from_admitted_network(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    config = config_for(origin.port, users=[{"name": "sensor2", "password_hash": PASSWORD_HASH}])
    proxy = make_proxy(config)
    status, _ = request(proxy.port, f"{SENSOR}:{origin.port}", basic("sensor2", "nope"))
    assert status == 407
    status, _ = request(proxy.port, f"{SENSOR}:{origin.port}", "Proxy-Authorization: Bearer x\r\n")
    assert status == 407
    status, _ = request(
        proxy.port, f"{SENSOR}:{origin.port}", basic("sensor2", PASSWORD), extra=b"E"
    )
    assert status == 200
    outcomes = [r["outcome"] for r in proxy.access_records(expect=3)]
    assert outcomes == ["auth_failed", "auth_failed", "established"]


def test_user_networks_restrict_where_a_user_may_connect_from(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    config = config_for(
        origin.port,
        clients=[],
        users=[{"name": "sensor2", "password_hash": PASSWORD_HASH, "networks": ["10.20.0.0/16"]}],
    )
    proxy = make_proxy(config)
    status, _ = request(proxy.port, f"{SENSOR}:{origin.port}", basic("sensor2", PASSWORD))
    assert status == 407


def test_htpasswd_file_users(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    # {SHA} of "secret": what `htpasswd -s` writes.
    digest = base64.b64encode(hashlib.sha1(b"secret").digest()).decode()
    htpasswd.write_text(f"sensor3:{{SHA}}{digest}\n")
    config = config_for(origin.port, clients=[], htpasswd_file=str(htpasswd))
    proxy = make_proxy(config)
    assert request(proxy.port, f"{SENSOR}:{origin.port}", basic("sensor3", "secret"))[0] == 200
    assert request(proxy.port, f"{SENSOR}:{origin.port}", basic("sensor3", "nope"))[0] == 407


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("sensor.azure-devices.net:22", "port"),
        ("evil.com:443", "host"),
        ("sensor.azure-devices.net.evil.com:443", "host"),
        ("127.0.0.1:443", "ip literal"),
        ("[::1]:443", "ip literal"),
    ],
)
def test_forbidden_destinations(
    make_proxy: ProxyFactory, origin: OriginServer, target: str, why: str
) -> None:
    proxy = make_proxy(config_for(origin.port))
    status, data = request(proxy.port, target)
    assert status == 403, (why, data)
    assert origin.connections == 0


def test_default_deny_networks_refuse_names_resolving_to_loopback(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    config = config_for(origin.port)
    del config["destinations"]["deny_networks"]  # the default denies 127.0.0.0/8
    proxy = make_proxy(config)
    status, data = request(proxy.port, f"{SENSOR}:{origin.port}")
    assert status == 403
    assert b"not allowed" in data
    assert origin.connections == 0


def test_unresolvable_name_is_502(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port))
    status, _ = request(proxy.port, f"unknown-host.azure-devices.net:{origin.port}")
    assert status == 502
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "resolve_failed"


def test_connection_refused_is_502(make_proxy: ProxyFactory) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    proxy = make_proxy(config_for(dead_port))
    status, _ = request(proxy.port, f"{SENSOR}:{dead_port}")
    assert status == 502
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "connect_failed"


def test_connect_timeout_is_504(make_proxy: ProxyFactory) -> None:
    # A listener whose accept queue is full drops further SYNs: a connect that never completes.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        proxy = make_proxy(config_for(port, timeouts={"connect": 1}))
        began = time.monotonic()
        status, _ = request(proxy.port, f"{SENSOR}:{port}")
        assert status == 504
        assert 0.9 < time.monotonic() - began < 5
        for s in fillers:
            s.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "connect_timeout"


def test_per_source_limit_is_503_without_reading(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port, limits={"max_connections_per_source": 2}))
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as third:
        assert status_of(third.recv(200)) == 503
    for s in held:
        s.close()
    time.sleep(0.2)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}", extra=b"E")
    assert sock.recv(1) == b"E"
    sock.close()


def test_max_connections_is_503(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port, limits={"max_connections": 2}))
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as third:
        assert status_of(third.recv(200)) == 503
    for s in held:
        s.close()
    records = proxy.access_records(expect=3)
    assert sorted(r["outcome"] for r in records)[-1] == "overloaded"


# ---- the tunnel of section 5 -----------------------------------------------------------------


def test_early_data_is_delivered_first(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}", extra=b"Ehello")
    data = b""
    while len(data) < 6:
        data += sock.recv(100)
    assert data == b"Ehello"
    sock.close()


def test_half_close_client_to_server(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}")
    payload = b"H" + b"x" * 100_000
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)  # the origin answers only after it sees our EOF
    assert recv_all(sock).decode() == hashlib.sha256(payload[1:]).hexdigest()
    sock.close()


def test_half_close_server_to_client(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}", extra=b"R")
    assert recv_all(sock) == b"bye"  # the origin's EOF reached us...
    late = b"still flowing" * 1000
    sock.sendall(late)  # ...and our direction still works
    sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    while not origin.results and time.monotonic() < deadline:
        time.sleep(0.02)
    assert origin.results == [hashlib.sha256(late).hexdigest()]
    sock.close()


def test_idle_timeout_closes_both_sides(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    proxy = make_proxy(config_for(origin.port, timeouts={"idle": 1}))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}", extra=b"E")
    assert sock.recv(1) == b"E"
    sock.settimeout(5)
    began = time.monotonic()
    assert sock.recv(10) == b""
    assert 0.8 < time.monotonic() - began < 3
    [record] = proxy.access_records(expect=1)
    assert record["error"] == "idle timeout"


def test_reset_from_origin_closes_client(make_proxy: ProxyFactory) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proxy = make_proxy(config_for(port))
        sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{port}")
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST
        sock.settimeout(5)
        with pytest.raises((ConnectionResetError, AssertionError)):
            assert sock.recv(10) != b""
            raise AssertionError
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_backpressure_keeps_memory_bounded(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    """The origin sends 300 MB as fast as it can; the client does not read for two seconds.
    The proxy must stop reading from the origin instead of buffering."""
    size = 300 * 1024 * 1024
    proxy = make_proxy(config_for(origin.port))
    assert proxy.proc is not None
    sock = open_tunnel_with_early_data(
        proxy.port, f"{SENSOR}:{origin.port}", extra=b"D" + size.to_bytes(8, "big")
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    before = _rss_kib(proxy.proc.pid)
    time.sleep(2)
    grown = _rss_kib(proxy.proc.pid) - before
    assert grown < 8 * 1024, f"proxy RSS grew {grown} KiB while the client was not reading"
    h = hashlib.sha256()
    got = 0
    while data := sock.recv(1 << 20):
        h.update(data)
        got += len(data)
    expected = hashlib.sha256()
    for chunk in pattern(size):
        expected.update(chunk)
    assert got == size and h.hexdigest() == expected.hexdigest()


def test_100mb_each_way_checked_by_hash(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    size = 100 * 1024 * 1024
    proxy = make_proxy(config_for(origin.port))
    expected = hashlib.sha256()
    for chunk in pattern(size):
        expected.update(chunk)

    up = open_tunnel_with_early_data(
        proxy.port, f"{SENSOR}:{origin.port}", extra=b"S" + size.to_bytes(8, "big")
    )
    for chunk in pattern(size):
        up.sendall(chunk)
    assert recv_all(up).decode() == expected.hexdigest()
    up.close()

    down = open_tunnel_with_early_data(
        proxy.port, f"{SENSOR}:{origin.port}", extra=b"D" + size.to_bytes(8, "big")
    )
    h = hashlib.sha256()
    got = 0
    while data := down.recv(1 << 20):
        h.update(data)
        got += len(data)
    down.close()
    assert got == size and h.hexdigest() == expected.hexdigest()

    records = proxy.access_records(expect=2)
    assert records[0]["bytes_client_to_server"] == 9 + size
    assert records[1]["bytes_server_to_client"] == size
    assert records[1]["bytes_client_to_server"] == 9


def test_one_bad_client_does_not_disturb_others(
    make_proxy: ProxyFactory, origin: OriginServer
) -> None:
    proxy = make_proxy(config_for(origin.port))
    good = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{origin.port}", extra=b"E")
    assert good.recv(1) == b"E"
    for junk in (b"\x16\x03\x01\x00\xff" + b"\x00" * 300, b"\xff" * 9000, b"CONNECT"):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(junk)
        s.close()
    good.sendall(b"still here")
    assert good.recv(100) == b"still here"
    good.close()
    assert proxy.proc is not None and proxy.proc.poll() is None
