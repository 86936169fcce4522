"""The TLS guard (SPEC 5.1) over real sockets: real clients (curl, Python `ssl`, `openssl
s_client`), the proxy as a real process, origins and upstreams on loopback.

What the guard must show from outside: a ClientHello for the CONNECT host passes and reaches the
origin byte for byte; anything else is closed after the 200 without one byte reaching the
destination, logged as `tls_refused` with its cause and counted by client and reason; `observe`
only logs. Origins here record what arrives, so "nothing reached the destination" is checked,
not assumed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cpbench.tools import client_hello

from tests.conftest import ProxyFactory
from tests.support import (
    REPO_ROOT,
    SENSOR,
    HTTPSOrigin,
    ProxyProcess,
    ThreadedServer,
    config_for,
    connect_raw,
    curl,
    metric,
    open_tunnel_with_early_data,
    read_exactly,
    read_head,
    status_of,
    tls_proxy,
)
from tests.unit.wire.hellos import extension, hello_message, records, reframe, sni, versions

CHROMIUM_HELLO = REPO_ROOT / "fuzz" / "corpus" / "tlshello" / "chromium-156"
CHROMIUM_NAME = "sensor.example.net"  # the server_name of that capture
JA4 = re.compile(r"t1[0-3][di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}\Z")


# ---- peers ---------------------------------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoOrigin = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        got = bytearray()
        try:
            while chunk := sock.recv(65536):
                got += chunk
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            with server.lock:
                server.received.append(bytes(got))


class EchoOrigin(ThreadedServer):
    """Echoes every byte, and keeps what each connection delivered once it has ended."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(_EchoHandler)

    def wait_ended(self, count: int, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received)} origin connections ended, not {count}")


class _UpstreamHandler(socketserver.BaseRequestHandler):
    """An upstream proxy that answers its 200 together with tunnel bytes of its own, then
    echoes: the bytes after its head are the proxy's `dialed.early`."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nserver-first")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                sock.sendall(rest)
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        except OSError:
            pass


@pytest.fixture()
def echo() -> Iterator[EchoOrigin]:
    with EchoOrigin() as server:
        yield server


# ---- hellos and clients --------------------------------------------------------------------------


def python_hello(server_name: str | None) -> bytes:
    """The ClientHello Python's `ssl` sends for `server_name` (the benchmark's recorded hello)."""
    return client_hello(server_name)


def guarded(port: int, mode: str = "verify_sni", **overrides: Any) -> dict[str, Any]:
    config = config_for(port, **overrides)
    config["allow"]["tls"] = mode
    return config


def assert_closed(sock: socket.socket, timeout: float = 5.0) -> None:
    """The proxy closed the tunnel: EOF or a reset, and not one byte before it."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    finally:
        sock.close()
    assert data == b""


def refused(proxy: ProxyProcess, reason: str) -> float:
    return metric(
        proxy.metrics_text(), "connectproxy_tls_refused_total", client="local", reason=reason
    )


def openssl_via(
    proxy: ProxyProcess, target: str, ca_file: Path, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """`openssl s_client` through the proxy's CONNECT, sending one GET; its whole output."""
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-proxy",
            f"127.0.0.1:{proxy.port}",
            "-connect",
            target,
            "-CAfile",
            str(ca_file),
            "-verify_return_error",
            "-quiet",
            *options,
        ],
        input=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        capture_output=True,
        timeout=30,
    )


def python_get(port: int, target: str, server_name: str | None, ca_file: Path) -> bytes:
    """A GET over Python `ssl` inside a CONNECT tunnel; the whole answer."""
    sock = open_tunnel_with_early_data(port, target)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = server_name is not None
    with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


# ---- verify_sni: real clients pass ---------------------------------------------------------------


def test_curl_python_and_openssl_pass_verify_sni_and_are_logged(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    proxy = make_proxy(guarded(https_origin.port))
    target = f"{SENSOR}:{https_origin.port}"
    result = curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(ca_file), f"https://{target}/"
    )
    assert result.returncode == 0, result.stderr + proxy.stderr()
    assert result.stdout == "hello from the origin\n"
    proxy.access_records(expect=1)  # curl's record first: it is the one offering h2
    assert python_get(proxy.port, target, SENSOR, ca_file).endswith(b"hello from the origin\n")
    s_client = openssl_via(proxy, target, ca_file, "-servername", SENSOR)
    assert b"hello from the origin" in s_client.stdout, s_client.stderr

    records = proxy.access_records(expect=3)
    assert [r["outcome"] for r in records] == ["established"] * 3
    for record in records:
        assert record["sni"] == SENSOR and record["tls_version"] == "1.3"
        assert JA4.match(record["ja4"]), record["ja4"]
        assert record["bytes_client_to_server"] > 0 and record["error"] is None
    assert records[0]["alpn"] == "h2,http/1.1"  # curl offers both
    assert records[1]["alpn"] is None  # Python's default context offers none
    # Three clients, three fingerprints: what JA4 is for.
    assert len({r["ja4"] for r in records}) == 3
    assert refused(proxy, "sni_mismatch") == 0


def test_openssl_with_another_server_name_is_refused(
    make_proxy: ProxyFactory, echo: EchoOrigin, ca_file: Path
) -> None:
    """Domain fronting: CONNECT to an allowed host, a ClientHello for another one."""
    proxy = make_proxy(guarded(echo.port))
    s_client = openssl_via(proxy, f"{SENSOR}:{echo.port}", ca_file, "-servername", "other.host")
    assert s_client.returncode != 0
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "tls_refused" and record["status"] == 200
    assert record["error"] == f"server_name other.host does not match host {SENSOR}"
    assert record["sni"] == "other.host" and record["tls_version"] == "1.3"
    assert JA4.match(record["ja4"])
    assert record["bytes_client_to_server"] == 0
    assert refused(proxy, "sni_mismatch") == 1
    text = proxy.metrics_text()
    assert metric(text, "connectproxy_requests_total", outcome="tls_refused") == 1
    assert echo.wait_ended(1) == [b""]  # connected, and not one byte reached it


# ---- require: what is not TLS --------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: sensor.azure-devices.net\r\n\r\n",
        bytes(range(256)) * 4,
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a handshake record, but a ServerHello
    ],
    ids=["http", "binary", "server-hello"],
)
def test_what_is_not_tls_is_refused_under_require(
    make_proxy: ProxyFactory, echo: EchoOrigin, first_bytes: bytes
) -> None:
    proxy = make_proxy(guarded(echo.port, "require"))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(first_bytes)
    assert_closed(sock)
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["status"], record["error"]) == ("tls_refused", 200, "not TLS")
    assert [record[k] for k in ("sni", "tls_version", "alpn", "ja4")] == [None] * 4
    assert refused(proxy, "not_tls") == 1
    assert echo.wait_ended(1) == [b""]


def test_require_passes_any_server_name(make_proxy: ProxyFactory, echo: EchoOrigin) -> None:
    proxy = make_proxy(guarded(echo.port, "require"))
    hello = python_hello("anything.example")
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(hello)
    assert read_exactly(sock, len(hello)) == hello
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and record["sni"] == "anything.example"


# ---- how the hello arrives -----------------------------------------------------------------------


def test_a_hello_sent_one_byte_at_a_time_passes_unchanged(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    proxy = make_proxy(guarded(echo.port))
    hello = python_hello(SENSOR)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(hello)):
        sock.send(hello[i : i + 1])
        time.sleep(0.001)
    assert read_exactly(sock, len(hello)) == hello
    sock.sendall(b"after the hello")
    assert read_exactly(sock, 15) == b"after the hello"
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and record["sni"] == SENSOR
    assert record["bytes_client_to_server"] == len(hello) + 15
    assert echo.wait_ended(1) == [hello + b"after the hello"]


@pytest.mark.parametrize("split", ["all", "half"])
def test_bytes_sent_with_the_connect_head_start_the_hello(
    make_proxy: ProxyFactory, echo: EchoOrigin, split: str
) -> None:
    proxy = make_proxy(guarded(echo.port))
    hello = python_hello(SENSOR)
    cut = len(hello) if split == "all" else 100
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}", extra=hello[:cut])
    time.sleep(0.05)
    sock.sendall(hello[cut:])
    assert read_exactly(sock, len(hello)) == hello
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and record["sni"] == SENSOR


def test_a_post_quantum_sized_hello_over_many_records_and_segments(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    """Chromium's almost 2 KB hello (an X25519MLKEM768 key share), recorded, cut into 256-byte
    records and sent in 100-byte segments."""
    hello = reframe(CHROMIUM_HELLO.read_bytes(), 256)
    assert hello.count(b"\x16\x03\x01") >= 8
    config = guarded(echo.port)
    config["allow"]["domains"].append(CHROMIUM_NAME)
    config["destinations"]["hosts"][CHROMIUM_NAME] = "127.0.0.1"
    proxy = make_proxy(config)
    sock = open_tunnel_with_early_data(proxy.port, f"{CHROMIUM_NAME}:{echo.port}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(hello), 100):
        sock.send(hello[i : i + 100])
        time.sleep(0.005)
    assert read_exactly(sock, len(hello)) == hello
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and record["sni"] == CHROMIUM_NAME
    assert record["ja4"] == "t13d1517h2_8daaf6152771_cb7bf5808d99"  # the unit test's value
    assert record["alpn"] == "h2,http/1.1"


def test_a_real_handshake_with_a_large_key_share(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    """OpenSSL 3.0 has no post-quantum group; an ffdhe8192 key share (1 KB) makes a hello of
    the same order, and the handshake completes through the guard."""
    proxy = make_proxy(guarded(https_origin.port))
    target = f"{SENSOR}:{https_origin.port}"
    s_client = openssl_via(proxy, target, ca_file, "-servername", SENSOR, "-groups", "ffdhe8192")
    assert b"hello from the origin" in s_client.stdout, s_client.stderr
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and record["sni"] == SENSOR


# ---- timeout and size ----------------------------------------------------------------------------


def test_a_silent_client_times_out(make_proxy: ProxyFactory, echo: EchoOrigin) -> None:
    proxy = make_proxy(guarded(echo.port, timeouts={"handshake": 1}))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    began = time.monotonic()
    assert_closed(sock)
    assert 0.8 < time.monotonic() - began < 4
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["error"]) == ("tls_refused", "timeout")
    assert refused(proxy, "timeout") == 1


def test_a_hello_trickling_past_the_timeout_times_out(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    proxy = make_proxy(guarded(echo.port, timeouts={"handshake": 1}))
    hello = python_hello(SENSOR)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(hello[:50])
    assert_closed(sock)
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["error"]) == ("tls_refused", "timeout")
    assert echo.wait_ended(1) == [b""]


def test_a_hello_that_does_not_end_within_64_kib_is_incomplete(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    """A valid start that never ends in time: a 20 KB handshake message in 1-byte records
    takes 120 KB, so the 64 KiB limit comes first."""
    message = hello_message([0x1301], [sni(SENSOR.encode()), extension(0x0015, bytes(20000))])
    data = records(message, 1)
    proxy = make_proxy(guarded(echo.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    with contextlib.suppress(OSError):  # the proxy closes while we still send
        sock.sendall(data[:70000])
    assert_closed(sock)
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["error"]) == ("tls_refused", "incomplete ClientHello")
    assert refused(proxy, "incomplete") == 1
    assert echo.wait_ended(1) == [b""]


def test_a_hello_announcing_more_than_64_kib_is_incomplete_at_once(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    proxy = make_proxy(guarded(echo.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(b"\x16\x03\x01\x40\x00\x01" + (100_000).to_bytes(3, "big") + bytes(100))
    assert_closed(sock, timeout=2)  # well before the 10 s handshake timeout
    [record] = proxy.access_records(expect=1)
    assert record["error"] == "incomplete ClientHello"


def test_a_client_that_closes_mid_hello_is_incomplete(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    proxy = make_proxy(guarded(echo.port))
    hello = python_hello(SENSOR)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(hello[:100])
    sock.shutdown(socket.SHUT_WR)
    assert_closed(sock)
    [record] = proxy.access_records(expect=1)
    assert (record["outcome"], record["error"]) == ("tls_refused", "incomplete ClientHello")


# ---- IP literal targets --------------------------------------------------------------------------


def test_an_ip_literal_target_passes_only_without_a_server_name(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path, echo: EchoOrigin
) -> None:
    config = guarded(https_origin.port)
    config["allow"]["networks"] = ["127.0.0.1/32"]
    config["allow"]["ports"].append(echo.port)
    proxy = make_proxy(config)
    answer = python_get(proxy.port, f"127.0.0.1:{https_origin.port}", None, ca_file)
    assert answer.endswith(b"hello from the origin\n")
    proxy.access_records(expect=1)  # logged before the next tunnel: records are read in order

    sock = open_tunnel_with_early_data(proxy.port, f"127.0.0.1:{echo.port}")
    sock.sendall(python_hello(SENSOR))
    assert_closed(sock)
    ok, bad = proxy.access_records(expect=2)
    assert ok["outcome"] == "established" and ok["sni"] is None and ok["ja4"].startswith("t13i")
    assert bad["outcome"] == "tls_refused"
    assert bad["error"] == f"server_name {SENSOR} does not match host 127.0.0.1"


# ---- through an upstream -------------------------------------------------------------------------


def test_the_guard_runs_before_the_upstream_tunnel_carries_the_hello(
    make_proxy: ProxyFactory, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    """A (guarded) -> B (connectproxy, no guard) -> origin. A refused hello never reaches B's
    tunnel; a good one goes through both."""
    b = make_proxy(config_for(https_origin.port))
    a = make_proxy(
        {
            "allow": {"ports": [https_origin.port], "domains": [SENSOR], "tls": "verify_sni"},
            "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
            "upstream": {"proxies": [{"url": f"http://127.0.0.1:{b.port}"}]},
        }
    )
    target = f"{SENSOR}:{https_origin.port}"
    result = curl(
        "-x", f"http://127.0.0.1:{a.port}", "--cacert", str(ca_file), f"https://{target}/"
    )
    assert result.returncode == 0, result.stderr + a.stderr()
    assert result.stdout == "hello from the origin\n"
    a.access_records(expect=1)  # logged before the next tunnel: records are read in order
    s_client = openssl_via(a, target, ca_file, "-servername", "other.host")
    assert s_client.returncode != 0

    good, bad = a.access_records(expect=2)
    assert good["outcome"] == "established" and good["upstream"] == f"http://127.0.0.1:{b.port}"
    assert good["sni"] == SENSOR
    assert bad["outcome"] == "tls_refused" and bad["sni"] == "other.host"
    assert refused(a, "sni_mismatch") == 1
    b_good, b_bad = b.access_records(expect=2)
    assert b_good["bytes_client_to_server"] > 0
    assert b_bad["outcome"] == "established" and b_bad["bytes_client_to_server"] == 0


def test_bytes_the_upstream_sends_with_its_200_still_reach_the_client(
    make_proxy: ProxyFactory,
) -> None:
    with ThreadedServer(_UpstreamHandler) as upstream:
        proxy = make_proxy(
            {
                "allow": {"ports": [443], "domains": [SENSOR], "tls": "verify_sni"},
                "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
                "upstream": {"proxies": [{"url": f"http://127.0.0.1:{upstream.port}"}]},
            }
        )
        sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:443")
        assert read_exactly(sock, 12) == b"server-first"  # before the client said anything
        hello = python_hello(SENSOR)
        sock.sendall(hello)
        assert read_exactly(sock, len(hello)) == hello
        sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established"
    assert record["bytes_server_to_client"] == 12 + len(hello)


# ---- observe -------------------------------------------------------------------------------------


def test_observe_logs_and_never_refuses(make_proxy: ProxyFactory, echo: EchoOrigin) -> None:
    proxy = make_proxy(guarded(echo.port, "observe", timeouts={"handshake": 1}))
    target = f"{SENSOR}:{echo.port}"
    sent = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", python_hello("other.host")]
    for count, data in enumerate(sent, start=1):
        sock = open_tunnel_with_early_data(proxy.port, target)
        sock.sendall(data)
        assert read_exactly(sock, len(data)) == data
        sock.close()
        # Each tunnel's record before the next opens: the records are read by their order.
        assert len(proxy.access_records(expect=count)) == count
    # Silent until the timeout, then a tunnel as any other.
    sock = open_tunnel_with_early_data(proxy.port, target)
    time.sleep(1.3)
    sock.sendall(b"late")
    assert read_exactly(sock, 4) == b"late"
    sock.close()
    plain, fronted, silent = proxy.access_records(expect=3)
    assert all(r["outcome"] == "established" for r in (plain, fronted, silent))
    assert [plain[k] for k in ("sni", "tls_version", "alpn", "ja4")] == [None] * 4
    assert fronted["sni"] == "other.host" and JA4.match(fronted["ja4"])
    assert silent["sni"] is None and silent["error"] is None
    text = proxy.metrics_text()
    assert "connectproxy_tls_refused_total{" not in text


# ---- the log when no policy has a guard, and the Squid format ------------------------------------


def test_without_a_guard_the_log_has_no_tls_fields(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    proxy = make_proxy(config_for(echo.port))
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(b"E not TLS at all")
    assert read_exactly(sock, 16) == b"E not TLS at all"
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established" and "sni" not in record


def test_a_guard_on_another_policy_gives_every_line_the_fields(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    config = config_for(echo.port)
    config["policies"] = {"guarded": {"domains": ["other.example"], "tls": "require"}}
    proxy = make_proxy(config)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(b"plain")
    assert read_exactly(sock, 5) == b"plain"
    sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["policy"] == "default" and record["outcome"] == "established"
    assert [record[k] for k in ("sni", "tls_version", "alpn", "ja4")] == [None] * 4


def test_squid_format_writes_a_refusal_as_tcp_denied_200(
    make_proxy: ProxyFactory, echo: EchoOrigin
) -> None:
    config = guarded(echo.port, "require")
    proxy = make_proxy(config, start=False)
    proxy.config["log"]["access_format"] = "squid"
    proxy.write_config()
    proxy.start()
    status, _ = status_and_close(proxy.port, f"{SENSOR}:{echo.port}", b"GET / HTTP/1.0\r\n\r\n")
    assert status == 200
    path = Path(proxy.config["log"]["access_log"])
    deadline = time.monotonic() + 5
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = path.read_text().splitlines()
    fields = line.split()
    assert fields[3] == "TCP_DENIED/200" and fields[5:7] == ["CONNECT", f"{SENSOR}:{echo.port}"]
    assert fields[8] == "HIER_DIRECT/127.0.0.1"


def status_and_close(port: int, target: str, first: bytes) -> tuple[int, bytes]:
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    sock, data = connect_raw(port, head)
    sock.sendall(first)
    assert_closed(sock)
    return status_of(data), data


def test_the_guard_comes_after_the_decision(make_proxy: ProxyFactory, echo: EchoOrigin) -> None:
    """A denied destination is still a 403, not a tunnel waiting for a ClientHello."""
    proxy = make_proxy(guarded(echo.port))
    for target in (f"denied.example:{echo.port}", f"127.0.0.2:{echo.port}"):
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        sock, data = connect_raw(proxy.port, head)
        sock.close()
        assert status_of(data) == 403
    assert [r["outcome"] for r in proxy.access_records(expect=2)] == ["forbidden"] * 2
    assert echo.wait_ended(0) == []


def test_versions_of_the_record_layer(make_proxy: ProxyFactory, echo: EchoOrigin) -> None:
    """Record versions TLS 1.0 to 1.3 pass `require`; an SSLv2-compatible hello is refused."""
    proxy = make_proxy(guarded(echo.port, "require"))
    message = hello_message([0x1301], [sni(SENSOR.encode()), versions(0x0304)])
    for count, version in enumerate((0x0301, 0x0303), start=1):
        data = records(message, version=version)
        sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
        sock.sendall(data)
        assert read_exactly(sock, len(data)) == data
        sock.close()
        proxy.access_records(expect=count)  # records are read in order
    sslv2 = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(sslv2)
    assert_closed(sock)
    records_ = proxy.access_records(expect=3)
    assert [r["outcome"] for r in records_] == ["established", "established", "tls_refused"]
    assert records_[2]["error"] == "not TLS"


# ---- an HTTPS-proxy listener (TLS from the client to the proxy) ----------------------------------


def test_the_guard_reads_the_inner_hello_on_a_tls_listener(
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
    server_cert: tuple[Path, Path],
    echo: EchoOrigin,
) -> None:
    """On a `tls` listener the ClientHello to check is the one inside the proxy's own TLS:
    curl's to the origin passes; another name, sent inside the same kind of connection, does
    not."""
    config = guarded(https_origin.port)
    config["allow"]["ports"].append(echo.port)
    proxy = tls_proxy(make_proxy, config, server_cert)
    result = curl(
        "--proxy",
        f"https://127.0.0.1:{proxy.port}",
        "--proxy-cacert",
        str(ca_file),
        "--cacert",
        str(ca_file),
        f"https://{SENSOR}:{https_origin.port}/",
    )
    assert result.returncode == 0, result.stderr + proxy.stderr()
    assert result.stdout == "hello from the origin\n"
    proxy.access_records(expect=1)  # logged before the next tunnel: records are read in order

    ctx = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as outer:
        target = f"{SENSOR}:{echo.port}"
        outer.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(outer).startswith(b"HTTP/1.1 200 ")
        outer.sendall(python_hello("other.host"))
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            assert outer.recv(65536) == b""
    good, bad = proxy.access_records(expect=2)
    assert good["outcome"] == "established" and good["sni"] == SENSOR
    assert bad["outcome"] == "tls_refused" and bad["sni"] == "other.host"
    assert echo.wait_ended(1) == [b""]


def test_the_admin_listing_shows_the_server_name_the_guard_passed(
    make_proxy: ProxyFactory, echo: EchoOrigin, tmp_path: Path
) -> None:
    """`GET /api/tunnels` (SPEC 7.1) carries the `sni` of a guarded tunnel: the name the guard
    compared, read before the tunnel started."""
    token = "t" * 40
    token_file = tmp_path / "admin.token"
    token_file.write_text(token + "\n")
    proxy = make_proxy(guarded(echo.port, admin={"token_file": str(token_file)}))
    hello = python_hello(SENSOR)
    sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:{echo.port}")
    sock.sendall(hello)
    assert read_exactly(sock, len(hello)) == hello
    conn = http.client.HTTPConnection("127.0.0.1", proxy.metrics_port, timeout=10)
    conn.request("GET", "/api/tunnels", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    listing = json.loads(response.read())
    conn.close()
    sock.close()
    assert response.status == 200
    [row] = listing
    assert row["sni"] == SENSOR and row["target"] == f"{SENSOR}:{echo.port}"
    assert row["bytes_client_to_server"] == len(hello)
