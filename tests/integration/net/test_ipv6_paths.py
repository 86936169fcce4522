"""The other places where the system hands the proxy an IPv6 address, on real sockets: a name
looked up to an IPv6 address (getaddrinfo's 4-tuple), the peer of a connection to an upstream
on ::1 (getpeername), the certificate of a TLS peer reached over IPv6, a client certificate on a
dual-stack listener, and the address a listening socket reports (getsockname).

Compiled (setup.py), a value of a shape the code does not declare fails where it crosses an
annotation; these run the proxy as a process of the build under test, so each of these paths is
exercised on both builds.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from connectproxy.config.model import Listener
from connectproxy.net.dial import lookup, open_tcp
from connectproxy.net.sockio import peer_address
from connectproxy.server.listening import bind_listener
from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    SENSOR,
    OriginServer,
    echo_exchange,
    free_port,
    read_head,
    status_of,
    write_leaf,
)

SENSOR_NAME = "sensor-7.plant-b"


def test_lookup_connect_and_peer_of_an_ipv6_address() -> None:
    """dial.lookup gets getaddrinfo's (host, port, flowinfo, scope_id) for an IPv6 address;
    open_tcp and peer_address then work with that family."""

    async def run(port: int) -> tuple[list[str], str | None]:
        addrs = await lookup("::1", port)
        sock, _ = await open_tcp(addrs, port)
        with sock:
            return [str(a) for a in addrs], peer_address(sock)

    with OriginServer("::1") as origin:
        addrs, peer = uvloop.run(run(origin.port))  # the loop the server runs on
    assert addrs == ["::1"]
    assert peer == f"[::1]:{origin.port}"


@pytest.mark.parametrize("host", ["::1", "::"])
def test_an_ipv6_listening_socket_reports_its_4_tuple(host: str) -> None:
    listener = Listener(host, 0)
    sock = bind_listener(listener, (listener,), reuse_port=False)
    with sock:
        assert sock.family == socket.AF_INET6
        name = sock.getsockname()
        assert len(name) == 4 and name[0] == host
        if host == "::":  # dual-stack: IPv4 clients too
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_https_upstream_on_ipv6_with_client_certificates_both_ways(
    make_proxy: ProxyFactory, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    """A (IPv4 listener) chains to B, an HTTPS proxy listening on ::1: A looks B up
    (getaddrinfo of an IPv6 address), verifies B's certificate for the IP address ::1 and logs
    B's peer address; B reads A's client certificate over IPv6 and admits it by name."""
    b_cert = write_leaf(ca, tmp_path, "b-server", "::1")
    a_cert = write_leaf(ca, tmp_path, "a-client", "proxy-a.plant")
    with OriginServer("127.0.0.1") as origin:
        allow = {"ports": [origin.port], "domains": [".azure-devices.net"]}
        b = make_proxy(
            {
                "allow": allow,
                "clients": [{"name": "site-a", "tls_names": ["proxy-a.plant"]}],
                "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
            },
            start=False,
        )
        b_port = free_port("::1")
        b.config["listen"] = [
            {
                "address": f"[::1]:{b_port}",
                "tls": {
                    "cert_file": str(b_cert[0]),
                    "key_file": str(b_cert[1]),
                    "client_ca_file": str(ca_file),
                    "require_client_cert": True,
                },
            }
        ]
        b.write_config()
        b.start()
        upstream = f"https://[::1]:{b_port}"
        a = make_proxy(
            {
                "allow": allow,
                "clients": [{"name": "local", "networks": ["127.0.0.1/32"]}],
                "upstream": {
                    "proxies": [
                        {
                            "url": upstream,
                            "ca_file": str(ca_file),
                            "cert_file": str(a_cert[0]),
                            "key_file": str(a_cert[1]),
                        }
                    ]
                },
            }
        )
        target = f"{SENSOR}:{origin.port}"
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = read_head(sock)
            assert status_of(head) == 200, (head, a.stderr(), b.stderr())
            echo_exchange(sock, b"Ethrough an IPv6 upstream")

    [a_record] = a.access_records(expect=1)
    assert (a_record["upstream"], a_record["server_addr"]) == (upstream, f"[::1]:{b_port}")
    [b_record] = b.access_records(expect=1)
    assert (b_record["client_addr"], b_record["client"]) == ("::1", "site-a")
    assert b_record["outcome"] == "established"


@pytest.mark.parametrize(
    ("family", "connect_to", "seen_as"),
    [
        pytest.param(socket.AF_INET6, "::1", "::1", id="ipv6"),
        pytest.param(socket.AF_INET6, "::ffff:127.0.0.1", "127.0.0.1", id="mapped"),
        pytest.param(socket.AF_INET, "127.0.0.1", "127.0.0.1", id="ipv4"),
    ],
)
def test_client_certificate_on_a_dual_stack_listener(
    make_proxy: ProxyFactory,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    family: int,
    connect_to: str,
    seen_as: str,
) -> None:
    """Admission by certificate name (the TLS peer data) for every client family. The client
    certificate carries IP and e-mail SANs besides its DNS name: only the DNS name counts."""
    server_cert = write_leaf(ca, tmp_path, "proxy-server", "127.0.0.1", "::1")
    client_cert = write_leaf(
        ca, tmp_path, "sensor", SENSOR_NAME, "::1", "127.0.0.1", "sensor@plant-b.example"
    )
    with OriginServer("127.0.0.1") as origin:
        proxy = make_proxy(
            {
                "allow": {"ports": [origin.port], "domains": [".azure-devices.net"]},
                "clients": [{"name": "plant-b", "tls_names": [SENSOR_NAME]}],
                "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
            },
            start=False,
        )
        port = free_port("::")
        tls: dict[str, Any] = {
            "cert_file": str(server_cert[0]),
            "key_file": str(server_cert[1]),
            "client_ca_file": str(ca_file),
        }
        proxy.config["listen"] = [{"address": f"[::]:{port}", "tls": tls}]
        proxy.write_config()
        proxy.start()
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        raw = socket.socket(family, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect((connect_to, port))
        target = f"{SENSOR}:{origin.port}"
        with ctx.wrap_socket(raw, server_hostname=seen_as) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = read_head(sock)
            assert status_of(head) == 200, (head, proxy.stderr())
            echo_exchange(sock, b"Ecertified")

    [record] = proxy.access_records(expect=1)
    assert (record["client_addr"], record["client"]) == (seen_as, "plant-b")
