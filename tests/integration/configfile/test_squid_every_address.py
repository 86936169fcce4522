"""`http_port PORT` without an address (and a squid.conf without http_port) is Squid listening on
every IPv4 and IPv6 address: import-squid and --squid-conf translate it to one dual-stack
"[::]:PORT" listener, with nothing to warn about, and that listener serves IPv4, IPv6 and
IPv4-mapped clients over real sockets."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectproxy.configfile.squid.translate import translate_file
from connectproxy.process.cli import main
from tests.conftest import ProxyFactory
from tests.support import free_port, read_head, status_of

SENSORS_ONLY = "acl localnet src 10.0.0.0/8\nhttp_access allow localnet\nhttp_access deny all\n"


@pytest.mark.parametrize(
    ("http_port", "listen"),
    [
        ("http_port 3128\n", ["[::]:3128"]),
        ("", ["[::]:3128"]),  # no http_port: Squid's default, 3128 on every address
        (
            "http_port 3128 require-proxy-header\n",
            [{"address": "[::]:3128", "proxy_protocol": "any"}],
        ),
        ("http_port 0.0.0.0:3128\n", ["0.0.0.0:3128"]),  # IPv4 only, as Squid
        ("http_port [::1]:3128\n", ["[::1]:3128"]),
    ],
)
def test_import_squid_translates_a_bare_port_to_every_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], http_port: str, listen: list[Any]
) -> None:
    conf = tmp_path / "squid.conf"
    conf.write_text(http_port + SENSORS_ONLY)
    assert main(["import-squid", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["listen"] == listen
    assert "IPv6" not in err and "IPv4" not in err


def test_check_config_on_a_squid_conf_says_every_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "squid.conf"
    conf.write_text("http_port 3128\n" + SENSORS_ONLY)
    assert main(["check-config", "--squid-conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert (
        "listen: [::]:3128 (every IPv4 and IPv6 address, one dual-stack socket; "
        "IPv4 only if the host has no IPv6)"
    ) in out.splitlines()


def test_the_translated_listener_serves_every_client_family(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The translation of `http_port PORT` run as it is (metrics and access log aside, which
    squid.conf does not set): Squid's built-in `localhost` acl (127.0.0.1, ::1) admits IPv4,
    IPv6 and IPv4-mapped clients of the one socket; the destination is then refused."""
    port = free_port("::")
    conf = tmp_path / "squid.conf"
    conf.write_text(f"http_port {port}\nhttp_access allow localhost\nhttp_access deny all\n")
    translation = translate_file(conf)
    assert translation.mapping["listen"] == [f"[::]:{port}"]
    proxy = make_proxy({}, start=False)
    proxy.config = dict(translation.mapping)
    proxy.config["metrics"] = {"listen": f"127.0.0.1:{proxy.metrics_port}"}
    proxy.config["log"] = {"access_log": str(proxy.workdir / "access.log")}
    proxy.write_config()
    proxy.start()

    for family, connect_to in [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::ffff:127.0.0.1"),
    ]:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect((connect_to, port))
            sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            head = read_head(sock)
            assert status_of(head) == 403, head
    records = proxy.access_records(expect=3)
    assert [(r["client_addr"], r["client"]) for r in records] == [
        ("127.0.0.1", "localhost"),
        ("::1", "localhost"),
        ("127.0.0.1", "localhost"),
    ]
