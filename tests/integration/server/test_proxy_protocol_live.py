"""PROXY protocol on live listeners (SPEC sections 3, 4 and 7): a real HAProxy in TCP mode in
front of connectproxy with `send-proxy` (v1) and `send-proxy-v2`, plus hand-written v2 headers
followed by TLS on the same listener.

Admission is made to depend on the original client address: connectproxy admits only
127.0.0.2/32, our test clients bind their source address to 127.0.0.2 or 127.0.0.3 before
connecting, and HAProxy's own connection to connectproxy comes from 127.0.0.1. Only a proxy that
believes the header admits the first and refuses the second.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    SENSOR,
    ExternalServer,
    OriginServer,
    ProxyProcess,
    free_ports,
    metric,
    read_exactly,
    read_head,
    status_of,
    write_leaf,
)

HAPROXY = "/usr/sbin/haproxy"
ADMITTED = "127.0.0.2"
REFUSED = "127.0.0.3"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass
class Stack:
    proxy: ProxyProcess
    v1_port: int  # connectproxy, proxy_protocol v1
    v2_port: int  # connectproxy, proxy_protocol v2
    v2_tls_port: int  # connectproxy, proxy_protocol v2 then TLS
    origin: OriginServer


@pytest.fixture()
def stack(make_proxy: ProxyFactory, origin: OriginServer, ca: trustme.CA, tmp_path: Path) -> Stack:
    cert, key = write_leaf(ca, tmp_path, "proxy-server", "127.0.0.1")
    config: dict[str, Any] = {
        "allow": {"ports": [origin.port], "domains": [".azure-devices.net"]},
        "clients": [{"name": "only-2", "networks": [f"{ADMITTED}/32"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
    }
    proxy = make_proxy(config, start=False)
    v2_port, v2_tls_port = free_ports(2)
    proxy.config["listen"] = [
        {"address": f"127.0.0.1:{proxy.port}", "proxy_protocol": "v1"},
        {"address": f"127.0.0.1:{v2_port}", "proxy_protocol": "v2"},
        {
            "address": f"127.0.0.1:{v2_tls_port}",
            "proxy_protocol": "v2",
            "tls": {"cert_file": str(cert), "key_file": str(key)},
        },
    ]
    proxy.write_config()
    proxy.start()
    return Stack(proxy, proxy.port, v2_port, v2_tls_port, origin)


@dataclass
class HAProxy:
    v1_port: int  # frontend sending PROXY v1
    v2_port: int  # frontend sending PROXY v2


@pytest.fixture()
def haproxy(stack: Stack, tmp_path: Path) -> Iterator[HAProxy]:
    v1_port, v2_port = free_ports(2)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend via_v1
    bind 127.0.0.1:{v1_port}
    default_backend proxy_v1

frontend via_v2
    bind 127.0.0.1:{v2_port}
    default_backend proxy_v2

backend proxy_v1
    server s1 127.0.0.1:{stack.v1_port} send-proxy

backend proxy_v2
    server s1 127.0.0.1:{stack.v2_port} send-proxy-v2
"""
    )
    server = ExternalServer(
        [HAPROXY, "-f", str(cfg), "-db"], (v1_port, v2_port), tmp_path / "haproxy.out"
    )
    server.start()
    try:
        yield HAProxy(v1_port, v2_port)
    finally:
        server.stop()


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def connect_request(sock: socket.socket, target: str, extra: bytes = b"") -> bytes:
    """Send a CONNECT; the response head, and for an error the rest until the close."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra)
    return read_head(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def proxy_v2_header(source: tuple[str, int] | None, destination: tuple[str, int]) -> bytes:
    """A v2 PROXY header for TCP over IPv4; `source` None makes it a LOCAL (health check) one."""
    if source is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")
    block = (
        socket.inet_aton(source[0])
        + socket.inet_aton(destination[0])
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
    )
    return V2_SIGNATURE + bytes([0x21, 0x11]) + len(block).to_bytes(2, "big") + block


@pytest.mark.haproxy
def test_haproxy_send_proxy_keeps_the_client_address(stack: Stack, haproxy: HAProxy) -> None:
    target = f"{SENSOR}:{stack.origin.port}"
    expected: list[tuple[str, int, str]] = []
    for port in (haproxy.v1_port, haproxy.v2_port):
        with connect_from(ADMITTED, port) as sock:
            answer = connect_request(sock, target, extra=b"Ehello")
            assert status_of(answer) == 200, answer
            assert read_exactly(sock, 6) == b"Ehello"
            expected.append((ADMITTED, sock.getsockname()[1], "established"))
        with connect_from(REFUSED, port) as sock:
            answer = connect_request(sock, target)
            assert status_of(answer) == 407, answer
            expected.append((REFUSED, sock.getsockname()[1], "auth_required"))

    records = stack.proxy.access_records(expect=4)
    seen = [(r["client_addr"], r["client_port"], r["outcome"]) for r in records]
    assert sorted(seen) == sorted(expected)
    admitted = [r for r in records if r["outcome"] == "established"]
    assert {r["client"] for r in admitted} == {"only-2"}


@pytest.mark.parametrize("listener", ["v1", "v2"])
def test_connection_without_a_proxy_header_is_closed_unanswered(
    stack: Stack, listener: str
) -> None:
    port = stack.v1_port if listener == "v1" else stack.v2_port
    with connect_from(ADMITTED, port) as sock:
        sock.sendall(f"CONNECT {SENSOR}:{stack.origin.port} HTTP/1.1\r\n\r\n".encode())
        assert read_until_closed(sock) == b""
    [record] = stack.proxy.access_records(expect=1)
    assert record["outcome"] == "bad_request"
    assert record["status"] is None
    assert "PROXY" in record["error"]
    assert record["client_addr"] == ADMITTED  # no header: the socket's peer
    assert stack.origin.connections == 0
    text = stack.proxy.metrics_text()
    assert metric(text, "connectproxy_handshake_failures_total", reason="proxy_protocol") == 1
    assert metric(text, "connectproxy_requests_total", outcome="bad_request") == 1


def test_proxy_v2_header_then_tls_on_one_listener(stack: Stack, ca_file: Path) -> None:
    """The header is read exactly, so the TLS ClientHello right behind it (often in the same
    segment) is left on the socket for the TLS layer."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    target = f"{SENSOR}:{stack.origin.port}"
    raw = socket.create_connection(("127.0.0.1", stack.v2_tls_port), timeout=5)
    raw.sendall(proxy_v2_header((ADMITTED, 40000), ("127.0.0.1", stack.v2_tls_port)))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        answer = connect_request(sock, target, extra=b"Ehello")
        assert status_of(answer) == 200, answer
        assert read_exactly(sock, 6) == b"Ehello"

    # The same listener refuses a client whose header names another address.
    raw = socket.create_connection(("127.0.0.1", stack.v2_tls_port), timeout=5)
    raw.sendall(proxy_v2_header((REFUSED, 40001), ("127.0.0.1", stack.v2_tls_port)))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert status_of(connect_request(sock, target)) == 407

    records = stack.proxy.access_records(expect=2)
    seen = sorted((r["client_addr"], r["client_port"], r["outcome"]) for r in records)
    assert seen == [(ADMITTED, 40000, "established"), (REFUSED, 40001, "auth_required")]


def test_proxy_v2_local_header_uses_the_socket_peer(stack: Stack) -> None:
    """LOCAL is what a balancer's health check sends: the peer (127.0.0.1 here) is the client,
    and it is not admitted."""
    with socket.create_connection(("127.0.0.1", stack.v2_port), timeout=5) as sock:
        sock.sendall(proxy_v2_header(None, ("127.0.0.1", stack.v2_port)))
        assert status_of(connect_request(sock, f"{SENSOR}:{stack.origin.port}")) == 407
    [record] = stack.proxy.access_records(expect=1)
    assert (record["client_addr"], record["outcome"]) == ("127.0.0.1", "auth_required")
