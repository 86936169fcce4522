"""IPv4 and IPv6 on real sockets (SPEC sections 3.1 and 4): listeners on 127.0.0.1, [::1] and a
dual-stack [::]; clients over IPv4, IPv6 and IPv4-mapped IPv6; plain, TLS and PROXY v1/v2
listeners, whose headers carry either family.

The suite runs on the compiled build and on plain Python (`make test`, `make test-pure`). The
compiled build checks annotations at run time, so an address of a shape the code did not declare
(an IPv6 socket's 4-tuple peer) fails there and only there: every case below goes through a
connectproxy process, so it meets the build the suite runs on.

A client on a dual-stack socket arrives as ::ffff:a.b.c.d. It must be admitted by the IPv4
networks that name it, logged and counted as a.b.c.d, and `explain` must decide for it as for
a.b.c.d.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from connectproxy.matching.addresses import peer_host
from connectproxy.process.cli import main
from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    SENSOR,
    OriginServer,
    ProxyProcess,
    echo_exchange,
    finish,
    free_port,
    read_head,
    scrape,
    status_of,
    value,
    write_leaf,
)

# Where each kind of client connects from, and what the proxy must make of it. An IPv4-mapped
# client is an IPv6 socket talking IPv4: on the wire, and to the proxy, it is 127.0.0.1.
CLIENTS = {
    "ipv4": (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    "ipv6": (socket.AF_INET6, "::1", "::1"),
    "mapped": (socket.AF_INET6, "::ffff:127.0.0.1", "127.0.0.1"),
}
# Which clients can reach which listener: an IPv4 listener takes IPv4 (mapped too), [::1] only
# IPv6, and the dual-stack [::] all three.
REACHES = {
    "127.0.0.1": ("ipv4", "mapped"),
    "::1": ("ipv6",),
    "::": ("ipv4", "ipv6", "mapped"),
}
KINDS = ("plain", "tls", "v1", "v2")
# What PROXY headers claim: an IPv4 client, an IPv6 one, and an IPv4-mapped one (which some
# balancers send for IPv4 clients of a dual-stack frontend), with what the proxy must log.
HEADER_SOURCES = {
    "ipv4": ("127.0.0.2", "127.0.0.2"),
    "ipv6": ("::1", "::1"),
    "mapped": ("::ffff:127.0.0.3", "127.0.0.3"),
}
# Admission: IPv4 clients only by an IPv4 network, IPv6 clients only by an IPv6 one.
CLIENTS_CONFIG = [
    {"name": "v4", "networks": ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32"]},
    {"name": "v6", "networks": ["::1/128"]},
]
CLIENT_NAME = {"127.0.0.1": "v4", "127.0.0.2": "v4", "127.0.0.3": "v4", "::1": "v6"}
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Matrix:
    proxy: ProxyProcess
    origin: OriginServer
    ports: dict[tuple[str, str], int]  # (listener host, kind) -> port
    ca_file: Path


@pytest.fixture(scope="module")
def matrix(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """One proxy with a listener for each address and kind: twelve listeners, one process."""
    workdir = tmp_path_factory.mktemp("dual-stack")
    cert, key = write_leaf(ca, workdir, "proxy-server", "127.0.0.1", "::1")
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ports: dict[tuple[str, str], int] = {}
    listen: list[dict[str, Any]] = []
    for host, kind in itertools.product(REACHES, KINDS):
        # A port free on both families: [::] takes the IPv4 port too.
        port = ports[(host, kind)] = free_port("::")
        entry: dict[str, Any] = {"address": f"{bracketed(host)}:{port}"}
        if kind == "tls":
            entry["tls"] = {"cert_file": str(cert), "key_file": str(key)}
        elif kind in ("v1", "v2"):
            entry["proxy_protocol"] = kind
        listen.append(entry)
    with OriginServer("::") as origin:
        config = {
            "listen": listen,
            "allow": {"ports": [origin.port], "domains": [".azure-devices.net"]},
            "clients": CLIENTS_CONFIG,
            "destinations": {"hosts": {SENSOR: "::1"}, "deny_networks": LOOPBACK_OK_DENY},
        }
        proxy = ProxyProcess(config, workdir).start()
        try:
            yield Matrix(proxy, origin, ports, ca_file)
        finally:
            proxy.stop()


def connect(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def proxy_header(version: str, source: str, source_port: int, port: int) -> bytes:
    """A PROXY header for TCP from `source`; the destination is loopback of the same family."""
    v6 = ":" in source
    destination = "::1" if v6 else "127.0.0.1"
    if version == "v1":
        return f"PROXY TCP{6 if v6 else 4} {source} {destination} {source_port} {port}\r\n".encode()
    family = socket.AF_INET6 if v6 else socket.AF_INET
    block = (
        socket.inet_pton(family, source)
        + socket.inet_pton(family, destination)
        + source_port.to_bytes(2, "big")
        + port.to_bytes(2, "big")
    )
    return (
        V2_SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11]) + len(block).to_bytes(2, "big") + block
    )


def records_for(proxy: ProxyProcess, client_ports: list[int]) -> dict[int, dict[str, Any]]:
    """The access records of these connections by client port (the module's other cases share
    the file, which is flushed once a second); the latest one where a port came back."""
    deadline = time.monotonic() + 5
    while True:
        found = {r["client_port"]: r for r in proxy.access_records()}
        if all(port in found for port in client_ports) or time.monotonic() > deadline:
            return {port: found[port] for port in client_ports if port in found}
        time.sleep(0.1)


# Ports the PROXY headers claim: below the ephemeral range, so no real client's port repeats one.
_header_ports = itertools.count(2000)


def tunnel(
    matrix: Matrix, port: int, kind: str, client: str, header: str | None
) -> tuple[int, str]:
    """One tunnel through the listener on `port`, echoed by the origin; the client port the
    proxy must log and the address it must show."""
    family, connect_to, seen_as = CLIENTS[client]
    sock = connect(family, connect_to, port)
    client_port = int(sock.getsockname()[1])
    if header is not None:
        claimed, seen_as = HEADER_SOURCES[header]
        client_port = next(_header_ports)
        sock.sendall(proxy_header(kind, claimed, client_port, port))
    if kind == "tls":
        ctx = ssl.create_default_context(cafile=str(matrix.ca_file))
        # The certificate names 127.0.0.1 and ::1; a mapped client checks the IPv4 one.
        sock = ctx.wrap_socket(sock, server_hostname=seen_as)
    target = f"{SENSOR}:{matrix.origin.port}"
    with sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = read_head(sock)
        assert status_of(head) == 200, (client, header, head)
        echo_exchange(sock, f"E {client} over {kind}, header {header}".encode())
    return client_port, seen_as


@pytest.mark.parametrize(
    ("host", "kind"),
    [pytest.param(h, k, id=f"{bracketed(h)}-{k}") for h, k in itertools.product(REACHES, KINDS)],
)
def test_every_listener_serves_every_client_family(matrix: Matrix, host: str, kind: str) -> None:
    """Each client family this listener can be reached from; on a PROXY listener, from each
    with a header of each family. The tunnel works, and the access record shows the address in
    its IPv4 form where it is an IPv4 client, admitted by the IPv4 network."""
    port = matrix.ports[(host, kind)]
    headers: list[str | None] = list(HEADER_SOURCES) if kind in ("v1", "v2") else [None]
    expected = {
        client_port: seen_as
        for client in REACHES[host]
        for header in headers
        for client_port, seen_as in [tunnel(matrix, port, kind, client, header)]
    }
    records = records_for(matrix.proxy, list(expected))
    seen = {
        p: (r["client_addr"], r["client"], r["outcome"], r["server_addr"])
        for p, r in records.items()
    }
    server_addr = f"[::1]:{matrix.origin.port}"
    assert seen == {
        p: (addr, CLIENT_NAME[addr], "established", server_addr) for p, addr in expected.items()
    }


@pytest.mark.parametrize("source", ["127.0.0.9", "::ffff:127.0.0.9"])
def test_an_ipv4_client_outside_the_ipv4_networks_is_refused_on_a_dual_stack_socket(
    matrix: Matrix, source: str
) -> None:
    """Admission by IPv4 networks also refuses: 127.0.0.9 is in no client's networks, whether it
    comes as IPv4 or from an IPv6 socket as ::ffff:127.0.0.9."""
    port = matrix.ports[("::", "plain")]
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("::ffff:127.0.0.1" if ":" in source else "127.0.0.1", port))
        client_port = int(sock.getsockname()[1])
        target = f"{SENSOR}:{matrix.origin.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert status_of(read_head(sock)) == 407
    record = records_for(matrix.proxy, [client_port])[client_port]
    assert (record["client_addr"], record["outcome"]) == ("127.0.0.9", "auth_required")


def test_metrics_and_limits_count_a_mapped_client_as_its_ipv4_address(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The per-source limit keys on the IPv4 form: a client holding its one allowed connection
    on the IPv4 listener is refused a second one on the dual-stack listener. Metrics label
    tunnels by the admitting client, the one the IPv4 network names."""
    with OriginServer("127.0.0.1") as origin:
        proxy = make_proxy(
            {
                "allow": {"ports": [origin.port], "domains": [".azure-devices.net"]},
                "clients": [{"name": "v4", "networks": ["127.0.0.0/8"]}],
                "destinations": {
                    "hosts": {SENSOR: "127.0.0.1"},
                    "deny_networks": LOOPBACK_OK_DENY,
                },
                "limits": {"max_connections_per_source": 1},
            },
            start=False,
        )
        dual_port = free_port("::")
        proxy.config["listen"] = [f"127.0.0.1:{proxy.port}", f"[::]:{dual_port}"]
        proxy.write_config()
        proxy.start()
        target = f"{SENSOR}:{origin.port}"
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        with connect(socket.AF_INET, "127.0.0.1", proxy.port) as first:
            first.sendall(request)
            assert status_of(read_head(first)) == 200
            echo_exchange(first, b"E" + b"x" * 999)
            with connect(socket.AF_INET6, "::ffff:127.0.0.1", dual_port) as second:
                second.sendall(request)
                assert status_of(read_head(second)) == 503
            finish(first)
        proxy.access_records(expect=2)  # the first tunnel has ended: its source slot is free
        with connect(socket.AF_INET6, "::ffff:127.0.0.1", dual_port) as third:
            third.sendall(request)
            assert status_of(read_head(third)) == 200
            echo_exchange(third, b"E" + b"y" * 499)
            finish(third)

        records = proxy.access_records(expect=3)
        assert {r["client_addr"] for r in records} == {"127.0.0.1"}
        assert sorted(r["status"] for r in records) == [200, 200, 503]
        deadline = time.monotonic() + 5
        while True:
            samples = scrape(proxy)
            up = value(
                samples,
                "connectproxy_tunnel_bytes_total",
                client="v4",
                direction="client_to_server",
            )
            if up == 1500 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert up == 1500
        assert not [key for key in samples if any("::ffff:" in v for _, v in key[1])]


def test_explain_decides_for_a_mapped_source_as_for_its_ipv4_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "connectproxy.yaml"
    config.write_text(
        'listen: ["[::]:3128"]\n'
        "clients: [{name: plant, networks: [10.20.0.0/16]}]\n"
        'allow: {domains: [".azure-devices.net"]}\n'
    )
    answers: dict[str, tuple[int, str]] = {}
    for source in ("10.20.1.2", "::ffff:10.20.1.2", "10.30.1.2", "::ffff:10.30.1.2"):
        status = main(["explain", "--config", str(config), "--source", source, f"{SENSOR}:443"])
        answers[source] = status, capsys.readouterr().out
    assert answers["::ffff:10.20.1.2"] == answers["10.20.1.2"]
    assert answers["10.20.1.2"][0] == 0
    assert "(client plant)" in answers["10.20.1.2"][1]
    assert answers["::ffff:10.30.1.2"] == answers["10.30.1.2"]
    assert answers["10.30.1.2"][0] == 1


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%lo", "fe80::1%lo"),  # the zone says which link; it stays
        ("::127.0.0.1", "::127.0.0.1"),  # IPv4-compatible is not how a dual-stack socket maps
    ],
)
def test_peer_host_shows_a_mapped_address_in_its_ipv4_form(host: str, shown: str) -> None:
    assert peer_host(host) == shown
