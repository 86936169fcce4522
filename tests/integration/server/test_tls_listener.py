"""The HTTPS-proxy listener (SPEC section 3 `listen[].tls`) with real clients: curl's
`--proxy https://`, client certificates as admission, and every way a TLS handshake can fail
without harming the server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import ProxyFactory
from tests.support import (
    SENSOR,
    HTTPSOrigin,
    OriginServer,
    ProxyProcess,
    config_for,
    curl,
    metric,
    read_exactly,
    read_head,
    status_of,
    tls_proxy,
    write_leaf,
)

SENSOR_NAME = "sensor-7.plant-b"


@pytest.fixture()
def client_cert(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_leaf(ca, tmp_path, "sensor", SENSOR_NAME)


def cert_only_config(origin_port: int, **overrides: Any) -> dict[str, Any]:
    """No network admission at all: only a certificate named SENSOR_NAME gets in."""
    return config_for(
        origin_port, clients=[{"name": "plant-b", "tls_names": [SENSOR_NAME]}], **overrides
    )


def curl_via(
    proxy: ProxyProcess, ca_file: Path, origin_port: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    return curl(
        "--proxy",
        f"https://127.0.0.1:{proxy.port}",
        "--proxy-cacert",
        str(ca_file),
        "--cacert",
        str(ca_file),
        *extra,
        f"https://{SENSOR}:{origin_port}/",
    )


def tls_client(
    port: int, ca_file: Path, cert: tuple[Path, Path] | None = None, timeout: float = 5.0
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def tls_connect(sock: ssl.SSLSocket, target: str, extra: bytes = b"") -> bytes:
    """Send a CONNECT over TLS; the response head (and for an error its body)."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra)
    return read_head(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the peer closes (a reset counts as closing); raises TimeoutError when
    the peer keeps the connection open past the socket's timeout."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_curl_through_the_tls_listener(
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
    server_cert: tuple[Path, Path],
) -> None:
    proxy = tls_proxy(make_proxy, config_for(https_origin.port), server_cert)
    result = curl_via(proxy, ca_file, https_origin.port)
    assert result.returncode == 0, result.stderr + proxy.stderr()
    assert result.stdout == "hello from the origin\n"
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["client"]) == ("established", "local")


def test_client_certificate_admits_without_a_network(
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    server_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
) -> None:
    proxy = tls_proxy(
        make_proxy,
        cert_only_config(https_origin.port),
        server_cert,
        client_ca=ca_file,
        require_client_cert=True,
    )
    cert, key = client_cert
    result = curl_via(
        proxy, ca_file, https_origin.port, "--proxy-cert", str(cert), "--proxy-key", str(key)
    )
    assert result.returncode == 0, result.stderr + proxy.stderr()
    assert result.stdout == "hello from the origin\n"

    # A certificate from the same CA with a name no client lists is verified but not admitted.
    stranger = write_leaf(ca, tmp_path, "stranger", "sensor-9.plant-c")
    with tls_client(proxy.port, ca_file, stranger) as sock:
        answer = tls_connect(sock, f"{SENSOR}:{https_origin.port}")
    assert status_of(answer) == 407, answer

    records = {r["outcome"]: r for r in proxy.access_records(expect=2)}
    assert records["established"]["client"] == "plant-b"
    assert records["established"]["client_addr"] == "127.0.0.1"
    assert records["auth_required"]["client"] is None


def test_required_certificate_missing_fails_the_handshake(
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
    server_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
) -> None:
    proxy = tls_proxy(
        make_proxy,
        cert_only_config(https_origin.port),
        server_cert,
        client_ca=ca_file,
        require_client_cert=True,
    )
    failed = curl_via(proxy, ca_file, https_origin.port)
    assert failed.returncode != 0
    assert failed.stdout == ""

    # The server survives and serves the next client.
    cert, key = client_cert
    ok = curl_via(
        proxy, ca_file, https_origin.port, "--proxy-cert", str(cert), "--proxy-key", str(key)
    )
    assert ok.returncode == 0, ok.stderr
    refused, admitted = proxy.access_records(expect=2)
    assert refused["outcome"] == "bad_request"
    assert refused["status"] is None
    assert "TLS" in refused["error"]
    assert admitted["outcome"] == "established"
    text = proxy.metrics_text()
    assert metric(text, "connectproxy_handshake_failures_total", reason="tls") == 1
    assert metric(text, "connectproxy_requests_total", outcome="bad_request") == 1


def test_optional_certificate_absent_is_407(
    make_proxy: ProxyFactory,
    origin: OriginServer,
    ca_file: Path,
    server_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
) -> None:
    proxy = tls_proxy(make_proxy, cert_only_config(origin.port), server_cert, client_ca=ca_file)
    with tls_client(proxy.port, ca_file) as sock:
        answer = tls_connect(sock, f"{SENSOR}:{origin.port}")
    assert status_of(answer) == 407, answer
    assert b'Proxy-Authenticate: Basic realm="connectproxy"' in answer

    with tls_client(proxy.port, ca_file, client_cert) as sock:
        answer = tls_connect(sock, f"{SENSOR}:{origin.port}", extra=b"Ehello")
        assert status_of(answer) == 200, answer
        assert read_exactly(sock, 6) == b"Ehello"
    records = proxy.access_records(expect=2)
    assert [r["outcome"] for r in records] == ["auth_required", "established"]


def test_plain_http_on_the_tls_port_is_closed(
    make_proxy: ProxyFactory, origin: OriginServer, server_cert: tuple[Path, Path]
) -> None:
    proxy = tls_proxy(make_proxy, config_for(origin.port), server_cert)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {SENSOR}:{origin.port} HTTP/1.1\r\n\r\n".encode())
        answer = read_to_eof(sock)
    assert b"HTTP/" not in answer  # at most a TLS alert, never an HTTP answer
    assert origin.connections == 0
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "bad_request"
    assert "TLS" in record["error"]
    text = proxy.metrics_text()
    assert metric(text, "connectproxy_handshake_failures_total", reason="tls") == 1


def test_tls_handshake_timeout(
    make_proxy: ProxyFactory, origin: OriginServer, server_cert: tuple[Path, Path]
) -> None:
    proxy = tls_proxy(make_proxy, config_for(origin.port, timeouts={"handshake": 0.5}), server_cert)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        began = time.monotonic()
        assert read_to_eof(sock) == b""
        assert 0.4 < time.monotonic() - began < 3
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "handshake_timeout"
    assert "tls" in record["error"]
    # Still serving.
    assert proxy.proc is not None and proxy.proc.poll() is None


def test_early_data_larger_than_one_read_over_tls(
    make_proxy: ProxyFactory,
    origin: OriginServer,
    ca_file: Path,
    server_cert: tuple[Path, Path],
) -> None:
    """The head and 12 KB of tunnel bytes in one TLS record: the request read takes part of the
    record, the rest is decrypted and waiting inside the TLS layer where no readiness event
    announces it. SPEC section 5: bytes sent right after the head are delivered first."""
    proxy = tls_proxy(make_proxy, config_for(origin.port), server_cert)
    early = b"E" + b"x" * 12_000
    with tls_client(proxy.port, ca_file) as sock:
        answer = tls_connect(sock, f"{SENSOR}:{origin.port}", extra=early)
        assert status_of(answer) == 200, answer
        echoed = b""
        with contextlib.suppress(TimeoutError):
            while len(echoed) < len(early):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                echoed += chunk
    assert len(echoed) == len(early)
    assert echoed == early


def test_tls_client_learns_of_the_origins_eof(
    make_proxy: ProxyFactory,
    origin: OriginServer,
    ca_file: Path,
    server_cert: tuple[Path, Path],
) -> None:
    """SPEC section 5: the origin's EOF is passed on. The origin sends 1000 bytes and closes;
    a TLS client waiting for the end must see it, not wait for timeouts.idle."""
    config = config_for(origin.port, timeouts={"shutdown_grace": 1})
    proxy = tls_proxy(make_proxy, config, server_cert)
    with tls_client(proxy.port, ca_file, timeout=3) as sock:
        answer = tls_connect(
            sock, f"{SENSOR}:{origin.port}", extra=b"D" + (1000).to_bytes(8, "big")
        )
        assert status_of(answer) == 200, answer
        got = read_to_eof(sock)
    assert len(got) == 1000
