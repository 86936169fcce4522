"""The allowlist bypass corpus: hostile request heads sent over real sockets to a live proxy whose
origin records every connection it receives. None of them may reach it.

tests/unit/wire/test_http.py pins the parser's verdict on each hostile form in memory; this file
checks the whole chain a packet goes through (accept, read loop, parser, admission, allowlist,
resolver, dial) with a destination that is really there. The proxy is set up so that a bypass would
succeed: every host name in the corpus, allowed or not, is mapped to the loopback origin in
`destinations.hosts`, loopback is not in `deny_networks`, and the origin listens on the same port
at 127.0.0.1, 127.0.0.2 and ::1. So the only thing between a hostile head and the origin is the
proxy's own judgement, and the positive controls show that a proper head does get through.

Three proxies cover the three ways in: admitted by source address (destination bypasses),
admitted only by Basic credentials (admission bypasses), and behind a PROXY protocol listener
that admits only the address the header carries (source spoofing).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectproxy.credentials.passwords import hash_password
from tests.support import LOOPBACK_OK_DENY, ProxyProcess, status_of

SENSOR = "sensor.azure-devices.net"
PASSWORD = "correct horse battery staple!"  # 37 bytes with the user: a padded token
# Every name a head below uses: a bypass must find a real destination behind any of them.
NAMES = [
    SENSOR,
    "azure-devices.net",
    "x.blob.core.windows.net",
    "download.microsoft.com",
    "evil.com",
    "sensor.azure-devices.net.evil.com",
    "azure-devices.net.evil.com",
    "evilazure-devices.net",
    "blob.core.windows.net",
    "a.download.microsoft.com",
    "download.microsoft.com.evil.com",
    "localhost",
    "xn--sensor-evil.com",
    "sensor.azure-devices.net-evil.com",
]


class RecordingOrigin:
    """Accepts on one port at 127.0.0.1, 127.0.0.2 and ::1 and records every connection, from
    any source, before reading a byte. Connections are closed at once: reaching it is the bug."""

    def __init__(self) -> None:
        self.connections: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sockets = self._bind_same_port(["127.0.0.1", "127.0.0.2", "::1"])
        self.port = int(self.sockets[0].getsockname()[1])
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _bind_same_port(hosts: list[str]) -> list[socket.socket]:
        for _ in range(20):
            bound: list[socket.socket] = []
            port = 0
            try:
                for host in hosts:
                    family = socket.AF_INET6 if ":" in host else socket.AF_INET
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    bound.append(sock)
                    sock.bind((host, port))
                    sock.listen(64)
                    sock.settimeout(0.05)
                    port = sock.getsockname()[1]
                return bound
            except OSError:
                for sock in bound:
                    sock.close()
        raise RuntimeError("could not bind one port on every loopback address")

    def _run(self) -> None:
        while not self._stop.is_set():
            for listener in self.sockets:
                with contextlib.suppress(TimeoutError, OSError):
                    conn, peer = listener.accept()
                    with self._lock:
                        self.connections.append(peer[:2])
                    conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.connections)

    def __enter__(self) -> RecordingOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingOrigin]:
    with RecordingOrigin() as server:
        yield server


def _config(origin_port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "allow": {
            "ports": [origin_port],
            "domains": [".azure-devices.net", "*.blob.core.windows.net", "download.microsoft.com"],
            "networks": ["127.0.0.2/32"],
        },
        "clients": [{"name": "local", "networks": ["127.0.0.0/8", "::1"]}],
        "destinations": {
            "hosts": dict.fromkeys(NAMES, "127.0.0.1"),
            "deny_networks": LOOPBACK_OK_DENY,
        },
        "timeouts": {"handshake": 1, "connect": 2},
        "limits": {"max_request_bytes": 4096},
        "log": {"level": "info"},
    }
    config.update(overrides)
    return config


@contextlib.contextmanager
def _running(
    workdir: Path, config: dict[str, Any], listen: dict[str, Any] | None = None
) -> Iterator[ProxyProcess]:
    workdir.mkdir()
    proxy = ProxyProcess(config, workdir)
    if listen is not None:
        proxy.config["listen"] = [{"address": f"127.0.0.1:{proxy.port}", **listen}]
        proxy.write_config()
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def by_address(
    origin: RecordingOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    with _running(tmp_path_factory.mktemp("bypass") / "a", _config(origin.port)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def by_password(
    origin: RecordingOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    config = _config(
        origin.port,
        clients=[],
        users=[{"name": "sensor2", "password_hash": hash_password(PASSWORD)}],
    )
    with _running(tmp_path_factory.mktemp("bypass") / "b", config) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def behind_balancer(
    origin: RecordingOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """Only the sensors' network 10.100.0.0/24, as told by a PROXY header, is admitted; the
    socket peer (127.0.0.1, the "load balancer") is not."""
    config = _config(origin.port, clients=[{"name": "plant", "networks": ["10.100.0.0/24"]}])
    workdir = tmp_path_factory.mktemp("bypass") / "c"
    with _running(workdir, config, listen={"proxy_protocol": "any"}) as proxy:
        yield proxy


# ---- the corpus -----------------------------------------------------------------------------

H = "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n"  # the plain form; {t} is the target, {p} the port


def _connect(target: str, *headers: str, version: str = "HTTP/1.1") -> str:
    return f"CONNECT {target} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"


def _token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


GOOD = f"{SENSOR}:{{p}}"
CRLF = "\r\n"

# (name, head) for the proxy that admits 127.0.0.0/8 by address. `{p}` is the origin's port.
# Heads are str templates encoded as UTF-8 (so non-ASCII shows up as its UTF-8 bytes), except
# the few that need raw bytes.
DESTINATION: list[tuple[str, str | bytes]] = [
    # --- look-alike names and suffix tricks --------------------------------------------------
    ("other-host", _connect("evil.com:{p}")),
    ("suffix-appended", _connect("sensor.azure-devices.net.evil.com:{p}")),
    ("apex-appended", _connect("azure-devices.net.evil.com:{p}")),
    ("glued-prefix", _connect("evilazure-devices.net:{p}")),
    ("hyphen-glued", _connect("sensor.azure-devices.net-evil.com:{p}")),
    ("wildcard-apex", _connect("blob.core.windows.net:{p}")),
    ("exact-subdomain", _connect("a.download.microsoft.com:{p}")),
    ("exact-appended", _connect("download.microsoft.com.evil.com:{p}")),
    ("localhost", _connect("localhost:{p}")),
    ("punycode-lookalike", _connect("xn--sensor-evil.com:{p}")),
    # --- case and dots --------------------------------------------------------------------------
    ("upper-evil", _connect("EVIL.COM:{p}")),
    ("mixed-case-appended", _connect("Sensor.Azure-Devices.Net.Evil.Com:{p}")),
    ("trailing-dot-evil", _connect("evil.com.:{p}")),
    ("two-trailing-dots", _connect("sensor.azure-devices.net..:{p}")),
    ("leading-dot", _connect(".azure-devices.net:{p}")),
    ("empty-label", _connect("sensor..azure-devices.net:{p}")),
    ("dot-only", _connect(".:{p}")),
    ("dot-suffix-of-evil", _connect("evil.com.azure-devices.net.:{p}.")),
    ("wildcard-target", _connect("*.azure-devices.net:{p}")),
    ("star-in-label", _connect("a*.azure-devices.net:{p}")),
    ("underscore", _connect("_x.azure-devices.net:{p}")),
    ("hyphen-edge", _connect("-x.azure-devices.net:{p}")),
    ("label-64", _connect("a" * 64 + ".azure-devices.net:{p}")),
    # --- encodings ----------------------------------------------------------------------------
    ("percent-dot", _connect("evil%2ecom:{p}")),
    ("percent-host", _connect("%73ensor.azure-devices.net:{p}")),
    ("percent-colon", _connect("evil.com%3a{p}")),
    ("backslash", _connect("evil.com\\.azure-devices.net:{p}")),
    ("nul-truncation", b"CONNECT evil.com\x00.azure-devices.net:{p} HTTP/1.1\r\n\r\n"),
    ("latin1-byte", b"CONNECT evil.com\xa0.azure-devices.net:{p} HTTP/1.1\r\n\r\n"),
    ("overlong-utf8-dot", b"CONNECT evil.com\xc0\xae.azure-devices.net:{p} HTTP/1.1\r\n\r\n"),
    ("tab-in-target", b"CONNECT evil.com\t.azure-devices.net:{p} HTTP/1.1\r\n\r\n"),
    # --- IDNA -----------------------------------------------------------------------------------
    ("idna-ideographic-dot", _connect("evil.com\u3002azure-devices.net:{p}")),
    ("idna-fullwidth-dot", _connect("evil.com\uff0eazure-devices.net:{p}")),
    ("idna-fullwidth-letters", _connect("\uff45vil.com:{p}")),
    ("idna-unicode-label", _connect("s\u00e9nsor.azure-devices.net:{p}")),
    ("idna-cyrillic-lookalike", _connect("sensor.\u0430zure-devices.net:{p}")),
    ("idna-fraction-slash", _connect("evil.com\u2044.azure-devices.net:{p}")),
    ("idna-zero-width", _connect("evil.com\u200b.azure-devices.net:{p}")),
    # --- IPv4 literal forms of the origin -------------------------------------------------------
    ("ipv4-loopback", _connect("127.0.0.1:{p}")),
    ("ipv4-short", _connect("127.1:{p}")),
    ("ipv4-short-2", _connect("127.2:{p}")),
    ("ipv4-three-parts", _connect("127.0.2:{p}")),
    ("ipv4-decimal", _connect("2130706434:{p}")),
    ("ipv4-hex", _connect("0x7f000002:{p}")),
    ("ipv4-hex-octets", _connect("0x7f.0x0.0x0.0x2:{p}")),
    ("ipv4-octal", _connect("0177.0.0.02:{p}")),
    ("ipv4-zero-padded", _connect("127.000.000.002:{p}")),
    ("ipv4-trailing-dot", _connect("127.0.0.2.:{p}")),
    ("ipv4-overflow-octet", _connect("127.0.0.258:{p}")),
    ("ipv4-in-brackets", _connect("[127.0.0.2]:{p}")),
    ("ipv4-zero", _connect("0.0.0.0:{p}")),
    ("ipv4-name-hybrid", _connect("127.0.0.2.azure-devices.net.127.0.0.1:{p}")),
    # --- IPv6 literal forms -------------------------------------------------------------------
    ("ipv6-loopback", _connect("[::1]:{p}")),
    ("ipv6-loopback-long", _connect("[0:0:0:0:0:0:0:1]:{p}")),
    ("ipv6-mapped-other", _connect("[::ffff:127.0.0.1]:{p}")),
    ("ipv6-mapped-hex", _connect("[::ffff:7f00:1]:{p}")),
    ("ipv6-compatible", _connect("[::127.0.0.2]:{p}")),
    ("ipv6-nat64", _connect("[64:ff9b::7f00:2]:{p}")),
    ("ipv6-6to4", _connect("[2002:7f00:2::]:{p}")),
    ("ipv6-unbracketed", _connect("::1:{p}")),
    ("ipv6-zone", _connect("[::1%lo]:{p}")),
    ("ipv6-zone-escaped", _connect("[::1%25lo]:{p}")),
    ("ipv6-unspecified", _connect("[::]:{p}")),
    ("ipv6-bracket-name", _connect("[sensor.azure-devices.net]:{p}")),
    ("ipv6-bracket-suffix", _connect("[::1].azure-devices.net:{p}")),
    # --- userinfo and URL forms ---------------------------------------------------------------
    ("userinfo", _connect("evil.com@sensor.azure-devices.net:{p}")),
    ("userinfo-reversed", _connect("sensor.azure-devices.net:{p}@evil.com")),
    ("userinfo-password", _connect("sensor.azure-devices.net:x@evil.com:{p}")),
    ("userinfo-loopback", _connect("sensor.azure-devices.net@127.0.0.1:{p}")),
    ("absolute-form", _connect("http://evil.com:{p}")),
    ("absolute-form-allowed", _connect("https://sensor.azure-devices.net:{p}/")),
    ("absolute-with-userinfo", _connect("http://sensor.azure-devices.net@evil.com:{p}/")),
    ("path", _connect("sensor.azure-devices.net:{p}/../evil.com")),
    ("query", _connect("sensor.azure-devices.net:{p}?evil.com")),
    ("fragment", _connect("evil.com:{p}#.azure-devices.net")),
    ("authority-form-get", f"GET http://{SENSOR}:{{p}}/ HTTP/1.1\r\nHost: {SENSOR}\r\n\r\n"),
    ("origin-form-get", f"GET / HTTP/1.1\r\nHost: {SENSOR}:{{p}}\r\n\r\n"),
    # --- ports --------------------------------------------------------------------------------
    ("port-other", _connect(f"{SENSOR}:22")),
    ("port-leading-zero", _connect(f"{SENSOR}:0{{p}}")),
    ("port-plus", _connect(f"{SENSOR}:+{{p}}")),
    ("port-twice", _connect(f"{SENSOR}:{{p}}:{{p}}")),
    ("port-overflow", _connect(f"{SENSOR}:{{p}}0000")),
    ("port-wraps-to-origin", _connect(f"{SENSOR}:{{p65536}}")),
    ("port-hex", _connect(f"{SENSOR}:0x{{px}}")),
    ("port-missing", _connect(SENSOR)),
    ("port-empty", _connect(f"{SENSOR}:")),
    # --- the Host header is not the target ---------------------------------------------------
    ("host-header-allowed", _connect("evil.com:{p}", f"Host: {SENSOR}:{{p}}")),
    ("host-headers-two", _connect("evil.com:{p}", f"Host: {SENSOR}", "Host: evil.com")),
    ("host-header-absolute", _connect("evil.com:{p}", f"Host: https://{SENSOR}/")),
    ("x-forwarded-host", _connect("evil.com:{p}", f"X-Forwarded-Host: {SENSOR}")),
    # --- request line and framing -------------------------------------------------------------
    ("lowercase-method", f"connect {SENSOR}:{{p}} HTTP/1.1\r\n\r\n"),
    ("method-suffix", f"CONNECTX {SENSOR}:{{p}} HTTP/1.1\r\n\r\n"),
    ("http2-version", _connect(GOOD, version="HTTP/2.0")),
    ("http09-no-version", f"CONNECT {SENSOR}:{{p}}\r\n\r\n"),
    ("double-space", f"CONNECT  {SENSOR}:{{p}} HTTP/1.1\r\n\r\n"),
    ("tab-separated", f"CONNECT\t{SENSOR}:{{p}}\tHTTP/1.1\r\n\r\n"),
    ("bare-lf", f"CONNECT {SENSOR}:{{p}} HTTP/1.1\n\n"),
    ("bare-cr", f"CONNECT {SENSOR}:{{p}} HTTP/1.1\r\r\n\r\n"),
    ("leading-crlf", f"\r\nCONNECT {SENSOR}:{{p}} HTTP/1.1\r\n\r\n"),
    ("obs-fold", _connect(GOOD, "X-A: 1", " folded")),
    ("space-before-colon", _connect(GOOD, "Host : x")),
    ("nul-in-header", b"CONNECT " + SENSOR.encode() + b":{p} HTTP/1.1\r\nX: \x00\r\n\r\n"),
    ("del-in-header", b"CONNECT " + SENSOR.encode() + b":{p} HTTP/1.1\r\nX: \x7f\r\n\r\n"),
    (
        "tls-before-head",
        b"\x16\x03\x01\x00\x05CONNECT " + SENSOR.encode() + b":{p} HTTP/1.1\r\n\r\n",
    ),
    ("proxy-header-on-plain", f"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n{_connect(GOOD)}"),
    # --- smuggling-style framing on CONNECT ----------------------------------------------------
    ("te-chunked", _connect(GOOD, "Transfer-Encoding: chunked") + "0\r\n\r\n"),
    ("te-identity", _connect(GOOD, "Transfer-Encoding: identity")),
    ("te-obfuscated", _connect(GOOD, "Transfer-Encoding : chunked")),
    ("te-tab", _connect(GOOD, "Transfer-Encoding:\tchunked")),
    ("te-and-cl", _connect(GOOD, "Content-Length: 4", "Transfer-Encoding: chunked") + "0\r\n\r\n"),
    ("cl-body", _connect(GOOD, "Content-Length: 5") + "hello"),
    ("cl-conflicting", _connect(GOOD, "Content-Length: 0", "Content-Length: 7")),
    ("cl-list", _connect(GOOD, "Content-Length: 0, 0")),
    ("cl-negative", _connect(GOOD, "Content-Length: -1")),
    ("cl-plus", _connect(GOOD, "Content-Length: +0")),
    ("cl-hex", _connect(GOOD, "Content-Length: 0x0")),
    ("cl-unicode-digit", _connect(GOOD, "Content-Length: \u0660")),
    ("pipelined-evil-then-good", _connect("evil.com:{p}") + _connect(GOOD)),
    ("pipelined-get-then-connect", f"GET / HTTP/1.1\r\n\r\n{_connect(GOOD)}"),
    (
        "te-smuggled-connect",
        _connect(GOOD, "Transfer-Encoding: chunked") + _connect("evil.com:{p}"),
    ),
    # --- overlong ---------------------------------------------------------------------------------
    ("overlong-target", _connect("a" * 5000 + ".azure-devices.net:{p}")),
    ("overlong-header", _connect(GOOD, "X-Pad: " + "p" * 5000)),
    ("many-headers", _connect(GOOD, *[f"X-{i}: {i}" for i in range(600)])),
    ("overlong-request-line-stall", f"CONNECT {'a' * 3000}"),
    ("incomplete-head-stall", _connect(GOOD)[:-2]),
    ("overlong-name-253", _connect(".".join(["a" * 63] * 4) + ":{p}")),
]

# For the proxy that admits only Basic credentials (user sensor2); the target is always allowed.
GOOD_AUTH = f"Proxy-Authorization: Basic {_token('sensor2', PASSWORD)}"
ADMISSION: list[tuple[str, str | bytes]] = [
    ("no-credentials", _connect(GOOD)),
    ("wrong-password", _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', 'x')}")),
    ("empty-password", _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', '')}")),
    ("user-case", _connect(GOOD, f"Proxy-Authorization: Basic {_token('Sensor2', PASSWORD)}")),
    (
        "password-trailing-space",
        _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', PASSWORD + ' ')}"),
    ),
    (
        "password-prefix",
        _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', PASSWORD[:-1])}"),
    ),
    ("unknown-user", _connect(GOOD, f"Proxy-Authorization: Basic {_token('root', PASSWORD)}")),
    ("empty-user", _connect(GOOD, f"Proxy-Authorization: Basic {_token('', PASSWORD)}")),
    (
        "no-colon",
        _connect(GOOD, "Proxy-Authorization: Basic " + base64.b64encode(b"sensor2").decode()),
    ),
    ("bearer", _connect(GOOD, f"Proxy-Authorization: Bearer {_token('sensor2', PASSWORD)}")),
    ("digest", _connect(GOOD, 'Proxy-Authorization: Digest username="sensor2"')),
    ("unpadded", _connect(GOOD, GOOD_AUTH.rstrip("="))),
    ("token-with-junk", _connect(GOOD, GOOD_AUTH + " junk")),
    ("authorization-not-proxy", _connect(GOOD, GOOD_AUTH.replace("Proxy-", ""))),
    ("duplicate-good", _connect(GOOD, GOOD_AUTH, GOOD_AUTH)),
    ("duplicate-bad-then-good", _connect(GOOD, "Proxy-Authorization: Basic eDp5", GOOD_AUTH)),
    ("duplicate-case", _connect(GOOD, GOOD_AUTH, GOOD_AUTH.replace("Proxy-", "proxy-"))),
    ("space-before-colon", _connect(GOOD, GOOD_AUTH.replace(":", " :", 1))),
    (
        "folded-credentials",
        _connect(GOOD, "Proxy-Authorization: Basic", " " + _token("sensor2", PASSWORD)),
    ),
    (
        "nul-in-credentials",
        _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', chr(0))}"),
    ),
    (
        "crlf-in-credentials",
        _connect(GOOD, f"Proxy-Authorization: Basic {_token('sensor2', PASSWORD + CRLF)}"),
    ),
    ("credentials-in-userinfo", _connect(f"sensor2:{PASSWORD}@{SENSOR}:{{p}}")),
    ("credentials-in-host-header", _connect(GOOD, f"Host: sensor2:{PASSWORD}@{SENSOR}")),
    ("credentials-after-head", _connect(GOOD) + GOOD_AUTH + "\r\n\r\n"),
    ("good-credentials-evil-target", _connect("evil.com:{p}", GOOD_AUTH)),
]

V1 = "PROXY TCP4 {src} 127.0.0.1 40000 3128\r\n"
ADMITTED_SRC = "10.100.0.5"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def _v2(source: str, command: int = 0x21, family: int = 0x11) -> bytes:
    block = ipaddress.IPv4Address(source).packed + bytes([127, 0, 0, 1]) + b"\x9c\x40\x0c\x38"
    return V2_SIG + bytes([command, family]) + len(block).to_bytes(2, "big") + block


# For the PROXY protocol listener that admits only 10.100.0.0/24 as told by the header.
SPOOFING: list[tuple[str, str | bytes]] = [
    ("no-proxy-header", _connect(GOOD)),
    ("outside-source", V1.format(src="10.9.9.9") + _connect(GOOD)),
    ("header-after-request", _connect(GOOD) + V1.format(src=ADMITTED_SRC)),
    (
        "two-headers-second-admitted",
        V1.format(src="10.9.9.9") + V1.format(src=ADMITTED_SRC) + _connect(GOOD),
    ),
    ("zero-padded-source", V1.format(src="010.100.000.005") + _connect(GOOD)),
    ("short-form-source", V1.format(src="10.100.5") + _connect(GOOD)),
    ("v1-unknown", "PROXY UNKNOWN 10.100.0.5 127.0.0.1 1 2\r\n" + _connect(GOOD)),
    ("v1-lowercase", V1.format(src=ADMITTED_SRC).lower() + _connect(GOOD)),
    ("v1-bare-lf", V1.format(src=ADMITTED_SRC).replace("\r\n", "\n") + _connect(GOOD)),
    ("v1-tcp6-mapped-outside", "PROXY TCP6 ::ffff:10.9.9.9 ::1 1 2\r\n" + _connect(GOOD)),
    (
        "x-forwarded-for",
        V1.format(src="10.9.9.9") + _connect(GOOD, f"X-Forwarded-For: {ADMITTED_SRC}"),
    ),
    (
        "forwarded-header",
        V1.format(src="10.9.9.9") + _connect(GOOD, f"Forwarded: for={ADMITTED_SRC}"),
    ),
    ("v2-outside", _v2("10.9.9.9") + _connect(GOOD).encode()),
    ("v2-local-admitted-block", _v2(ADMITTED_SRC, command=0x20) + _connect(GOOD).encode()),
    ("v2-unspec-family", _v2(ADMITTED_SRC, family=0x00) + _connect(GOOD).encode()),
    ("v2-version-1", _v2(ADMITTED_SRC, command=0x11) + _connect(GOOD).encode()),
    ("v2-truncated", _v2(ADMITTED_SRC)[:20]),
    ("v2-udp", _v2(ADMITTED_SRC, family=0x12) + _connect(GOOD).encode()),
]


def _render(head: str | bytes, port: int) -> bytes:
    raw = head.encode("utf-8") if isinstance(head, str) else head
    replacements = {
        b"{p}": str(port).encode(),
        b"{p65536}": str(port + 65536).encode(),
        b"{px}": format(port, "x").encode(),
    }
    for key, value in replacements.items():
        raw = raw.replace(key, value)
    return raw


def _exchange(port: int, raw: bytes) -> bytes:
    """Send the head and everything after it, read until the proxy closes; returns the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return data


def _assert_refused(proxy: ProxyProcess, origin: RecordingOrigin, head: str | bytes) -> None:
    before = origin.count()
    raw = _render(head, origin.port)
    answer = _exchange(proxy.port, raw)
    status = status_of(answer)
    assert status != 200, (raw[:200], answer[:200])
    assert status in (0, 400, 403, 405, 407, 408, 431), (raw[:200], answer[:200])
    if status:
        assert b"\r\nConnection: close\r\n" in answer
    assert origin.count() == before, f"{raw[:200]!r} reached the origin: {origin.connections}"


def _ids(table: list[tuple[str, str | bytes]]) -> list[str]:
    return [name for name, _ in table]


def test_corpus_is_big_enough() -> None:
    every = DESTINATION + ADMISSION + SPOOFING
    assert len(every) >= 100
    assert len(set(_ids(DESTINATION))) == len(DESTINATION)
    assert len(set(_ids(ADMISSION))) == len(ADMISSION)
    assert len(set(_ids(SPOOFING))) == len(SPOOFING)


@pytest.mark.parametrize("head", [h for _, h in DESTINATION], ids=_ids(DESTINATION))
def test_destination_bypass_is_refused(
    by_address: ProxyProcess, origin: RecordingOrigin, head: str | bytes
) -> None:
    _assert_refused(by_address, origin, head)


@pytest.mark.parametrize("head", [h for _, h in ADMISSION], ids=_ids(ADMISSION))
def test_admission_bypass_is_refused(
    by_password: ProxyProcess, origin: RecordingOrigin, head: str | bytes
) -> None:
    _assert_refused(by_password, origin, head)


@pytest.mark.parametrize("head", [h for _, h in SPOOFING], ids=_ids(SPOOFING))
def test_source_spoofing_is_refused(
    behind_balancer: ProxyProcess, origin: RecordingOrigin, head: str | bytes
) -> None:
    _assert_refused(behind_balancer, origin, head)


# ---- positive controls: the harness would see a bypass ------------------------------------------


def _assert_reaches(proxy: ProxyProcess, origin: RecordingOrigin, head: str | bytes) -> None:
    before = origin.count()
    raw = _render(head, origin.port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = sock.recv(39)
    assert status_of(answer) == 200, answer
    deadline = time.monotonic() + 5
    while origin.count() == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert origin.count() == before + 1


@pytest.mark.parametrize(
    "head",
    [
        _connect(GOOD),
        _connect("SENSOR.Azure-Devices.NET.:{p}"),
        _connect("azure-devices.net:{p}"),
        _connect("x.blob.core.windows.net:{p}"),
        _connect("download.microsoft.com:{p}", "Host: evil.com"),
        _connect("127.0.0.2:{p}"),
        _connect("[::ffff:127.0.0.2]:{p}"),
        _connect(GOOD, "Content-Length: 0", version="HTTP/1.0"),
    ],
)
def test_proper_heads_reach_the_origin(
    by_address: ProxyProcess, origin: RecordingOrigin, head: str
) -> None:
    _assert_reaches(by_address, origin, head)


def test_proper_credentials_reach_the_origin(
    by_password: ProxyProcess, origin: RecordingOrigin
) -> None:
    _assert_reaches(by_password, origin, _connect(GOOD, GOOD_AUTH))
    _assert_reaches(by_password, origin, _connect(GOOD, GOOD_AUTH.replace("Basic", "basic")))


def test_proper_proxy_headers_reach_the_origin(
    behind_balancer: ProxyProcess, origin: RecordingOrigin
) -> None:
    _assert_reaches(behind_balancer, origin, V1.format(src=ADMITTED_SRC) + _connect(GOOD))
    _assert_reaches(behind_balancer, origin, _v2(ADMITTED_SRC) + _connect(GOOD).encode())


def test_every_connection_is_logged_once_and_only_controls_got_through(
    by_address: ProxyProcess, origin: RecordingOrigin
) -> None:
    """Runs after the corpus: the proxy still answers a proper request, and its access log has a
    record for every head of the corpus, established only for allowlisted targets."""
    _assert_reaches(by_address, origin, _connect(GOOD))
    records = by_address.access_records()
    assert len(records) >= len(DESTINATION)
    allowed = {SENSOR, "azure-devices.net", "x.blob.core.windows.net", "download.microsoft.com"}
    allowed |= {"127.0.0.2", str(ipaddress.IPv6Address("::ffff:127.0.0.2"))}
    for record in records:
        if record["outcome"] == "established":
            host = record["target"].rsplit(":", 1)[0].strip("[]")
            assert host in allowed, record
    assert by_address.proc is not None and by_address.proc.poll() is None
