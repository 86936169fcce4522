"""Tests for the CONNECT request-head parser (SPEC section 4 steps 1-3 and error responses).

The hostile table is the heart of this file: each row is a way a client (or something between it
and us) might try to reach a destination the policy would not recognise, or to make us and
another HTTP implementation read the same bytes differently.
"""

from __future__ import annotations

import base64
import pickle
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.wire.hostnames import normalise_hostname
from connectproxy.wire.http import (
    Request,
    RequestError,
    Target,
    find_head_end,
    parse_basic_credentials,
    parse_head,
    parse_target,
    take_request,
)
from connectproxy.wire.responses import (
    ALLOW_CONNECT,
    ESTABLISHED,
    PROXY_AUTHENTICATE,
    error_response,
)

LIMIT = 8192
SECRET = "c2Vuc29yOnMzY3IzdA=="  # base64 of "sensor:s3cr3t"
AUTH = b"Proxy-Authorization: Basic " + SECRET.encode() + b"\r\n"


def connect_to(target: bytes | str, *header_lines: bytes) -> bytes:
    """A CONNECT head for `target`, as a sensor would send it."""
    raw_target = target.encode("utf-8") if isinstance(target, str) else target
    return b"CONNECT " + raw_target + b" HTTP/1.1\r\n" + b"".join(header_lines) + b"\r\n"


def read_request(raw: bytes, max_bytes: int = LIMIT) -> Request:
    """What the server does: find the end of the head, then parse exactly that."""
    end = find_head_end(raw, max_bytes)
    assert end != -1, "the head is complete, find_head_end must not ask for more bytes"
    return parse_head(raw[:end])


HOSTILE: list[tuple[str, bytes, int]] = [
    # --- step 3: target bypass attempts -------------------------------------------------------
    ("userinfo", connect_to("evil.com@sensor.azure-devices.net:443"), 400),
    ("userinfo-with-password", connect_to("user:pass@sensor.azure-devices.net:443"), 400),
    ("userinfo-trailing", connect_to("sensor.azure-devices.net:443@evil.com"), 400),
    ("ipv4-short", connect_to("127.1:443"), 400),
    ("ipv4-hex-number", connect_to("0x7f000001:443"), 400),
    ("ipv4-decimal-number", connect_to("2130706433:443"), 400),
    ("ipv4-octal", connect_to("0177.0.0.1:443"), 400),
    ("ipv4-zero-padded", connect_to("127.000.000.001:443"), 400),
    ("ipv4-hex-octet", connect_to("0x7f.0.0.1:443"), 400),
    ("ipv4-trailing-dot", connect_to("127.0.0.1.:443"), 400),
    ("ipv4-octet-256", connect_to("1.2.3.256:443"), 400),
    ("ipv4-three-octets", connect_to("10.0.1:443"), 400),
    ("ipv4-five-octets", connect_to("1.2.3.4.5:443"), 400),
    ("hex-last-label", connect_to("example.0x1:443"), 400),
    ("percent-escape-host", connect_to("%65vil.com:443"), 400),
    ("percent-escape-dot", connect_to("evil%2ecom:443"), 400),
    ("label-64", connect_to("a" * 64 + ".azure-devices.net:443"), 400),
    ("name-254", connect_to(".".join(["a" * 63] * 3 + ["b" * 62]) + ":443"), 400),
    ("empty-label", connect_to("sensor..azure-devices.net:443"), 400),
    ("leading-dot", connect_to(".azure-devices.net:443"), 400),
    ("two-trailing-dots", connect_to("sensor.azure-devices.net..:443"), 400),
    ("underscore", connect_to("_sensor.azure-devices.net:443"), 400),
    ("leading-hyphen", connect_to("-sensor.azure-devices.net:443"), 400),
    ("trailing-hyphen", connect_to("sensor-.azure-devices.net:443"), 400),
    ("wildcard", connect_to("*.azure-devices.net:443"), 400),
    ("non-ascii-host", connect_to("bücher.azure-devices.net:443"), 400),
    ("nul-in-target", connect_to(b"evil.com\x00.azure-devices.net:443"), 400),
    ("nul-after-port", connect_to(b"sensor.azure-devices.net:443\x00"), 400),
    ("tab-in-target", connect_to(b"sensor.azure-devices.net:443\t"), 400),
    ("backslash", connect_to("evil.com\\sensor.azure-devices.net:443"), 400),
    ("empty-host", connect_to(":443"), 400),
    # --- step 3: ports --------------------------------------------------------------------------
    ("port-leading-zero", connect_to("sensor.azure-devices.net:0443"), 400),
    ("port-plus", connect_to("sensor.azure-devices.net:+443"), 400),
    ("port-minus", connect_to("sensor.azure-devices.net:-443"), 400),
    ("port-65536", connect_to("sensor.azure-devices.net:65536"), 400),
    ("port-huge", connect_to("sensor.azure-devices.net:99999999999999999999"), 400),
    ("port-zero", connect_to("sensor.azure-devices.net:0"), 400),
    ("port-empty", connect_to("sensor.azure-devices.net:"), 400),
    ("port-missing", connect_to("sensor.azure-devices.net"), 400),
    ("port-twice", connect_to("sensor.azure-devices.net:443:443"), 400),
    ("port-hex", connect_to("sensor.azure-devices.net:0x1bb"), 400),
    ("port-non-ascii-digits", connect_to("sensor.azure-devices.net:٤٤٣"), 400),
    # --- step 3: IPv6 and brackets --------------------------------------------------------------
    ("ipv6-zone-escaped", connect_to("[::1%25eth0]:443"), 400),
    ("ipv6-zone", connect_to("[fe80::1%eth0]:443"), 400),
    ("ipv6-unbracketed", connect_to("::1:443"), 400),
    ("ipv6-unbracketed-full", connect_to("2001:db8::1:443"), 400),
    ("ipv6-bad-group", connect_to("[::g]:443"), 400),
    ("ipv6-empty", connect_to("[]:443"), 400),
    ("ipv6-no-colon", connect_to("[::1]443"), 400),
    ("ipv6-no-port", connect_to("[::1]"), 400),
    ("ipv6-unterminated", connect_to("[::1:443"), 400),
    ("brackets-ipv4", connect_to("[127.0.0.1]:443"), 400),
    ("brackets-name", connect_to("[sensor.azure-devices.net]:443"), 400),
    ("brackets-inside", connect_to("sensor[.azure-devices.net]:443"), 400),
    # --- step 3: URL forms ----------------------------------------------------------------------
    ("absolute-form", connect_to("http://sensor.azure-devices.net:443"), 400),
    ("absolute-form-https", connect_to("https://sensor.azure-devices.net:443/"), 400),
    ("path", connect_to("sensor.azure-devices.net:443/path"), 400),
    ("origin-form", connect_to("/"), 400),
    ("asterisk-form", connect_to("*"), 400),
    ("query", connect_to("sensor.azure-devices.net:443?x=1"), 400),
    ("fragment", connect_to("sensor.azure-devices.net:443#x"), 400),
    # --- step 1: request line -------------------------------------------------------------------
    ("http-2", b"CONNECT sensor.azure-devices.net:443 HTTP/2.0\r\n\r\n", 400),
    ("http-1.2", b"CONNECT sensor.azure-devices.net:443 HTTP/1.2\r\n\r\n", 400),
    ("http-lowercase", b"CONNECT sensor.azure-devices.net:443 http/1.1\r\n\r\n", 400),
    ("http-0.9-style", b"CONNECT sensor.azure-devices.net:443\r\n\r\n", 400),
    ("extra-word", b"CONNECT sensor.azure-devices.net:443 HTTP/1.1 x\r\n\r\n", 400),
    ("double-space", b"CONNECT  sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
    ("trailing-space", b"CONNECT sensor.azure-devices.net:443 HTTP/1.1 \r\n\r\n", 400),
    ("tab-separator", b"CONNECT\tsensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
    ("leading-space", b" CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
    ("leading-empty-line", b"\r\nCONNECT sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
    ("method-not-token", b"CON(NECT sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 400),
    ("method-non-ascii", "CÖNNECT h.example:443 HTTP/1.1\r\n\r\n".encode(), 400),
    ("empty-head", b"\r\n\r\n", 400),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n\r\n", 400),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # --- step 1: line endings and control bytes -------------------------------------------------
    ("lone-lf", b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\nHost: x\n\n", 400),
    ("lone-lf-in-headers", b"CONNECT h.example:443 HTTP/1.1\r\nHost: x\n\r\n", 400),
    ("lone-lf-end", b"CONNECT h.example:443 HTTP/1.1\r\n\n", 400),
    ("bare-cr", b"CONNECT h.example:443 HTTP/1.1\rHost: x\r\n\r\n", 400),
    ("cr-cr-lf", b"CONNECT h.example:443 HTTP/1.1\r\r\n\r\n", 400),
    ("nul-in-header", connect_to("h.example:443", b"X-Trace: a\x00b\r\n"), 400),
    ("del-in-header", connect_to("h.example:443", b"X-Trace: a\x7fb\r\n"), 400),
    ("vt-in-header", connect_to("h.example:443", b"X-Trace: a\x0bb\r\n"), 400),
    ("esc-in-header", connect_to("h.example:443", b"X-Trace: \x1b[31m\r\n"), 400),
    # --- step 1: header syntax ------------------------------------------------------------------
    ("obs-fold-space", connect_to("h.example:443", b"X-A: 1\r\n", b" folded\r\n"), 400),
    ("obs-fold-tab", connect_to("h.example:443", b"X-A: 1\r\n", b"\tfolded\r\n"), 400),
    ("obs-fold-first", connect_to("h.example:443", b" Host: x\r\n"), 400),
    ("header-no-colon", connect_to("h.example:443", b"Host x\r\n"), 400),
    ("header-empty-name", connect_to("h.example:443", b": x\r\n"), 400),
    ("header-space-before-colon", connect_to("h.example:443", b"Host : x\r\n"), 400),
    ("header-tab-before-colon", connect_to("h.example:443", b"Host\t: x\r\n"), 400),
    ("header-name-not-token", connect_to("h.example:443", b"Ho(st: x\r\n"), 400),
    ("header-name-non-ascii", connect_to("h.example:443", "Hóst: x\r\n".encode()), 400),
    ("duplicate-proxy-auth", connect_to("h.example:443", AUTH, AUTH), 400),
    (
        "duplicate-proxy-auth-case",
        connect_to(
            "h.example:443", AUTH, AUTH.replace(b"Proxy-Authorization", b"proxy-AUTHORIZATION")
        ),
        400,
    ),
    # --- smuggling guard: a CONNECT has no body -------------------------------------------------
    ("transfer-encoding", connect_to("h.example:443", b"Transfer-Encoding: chunked\r\n"), 400),
    ("content-length-5", connect_to("h.example:443", b"Content-Length: 5\r\n"), 400),
    ("content-length-list", connect_to("h.example:443", b"Content-Length: 0, 0\r\n"), 400),
    ("content-length-signed", connect_to("h.example:443", b"Content-Length: -0\r\n"), 400),
    # --- step 2: methods ------------------------------------------------------------------------
    ("lowercase-connect", b"connect sensor.azure-devices.net:443 HTTP/1.1\r\n\r\n", 405),
    ("get", b"GET / HTTP/1.1\r\nHost: sensor.azure-devices.net\r\n\r\n", 405),
    ("get-absolute", b"GET http://sensor.azure-devices.net/ HTTP/1.1\r\n\r\n", 405),
    ("post", b"POST / HTTP/1.0\r\n" + AUTH + b"\r\n", 405),
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\n\r\n", 405),
    # --- check order: syntax (400), then method (405), then target (400) ------------------------
    ("get-with-bad-header", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("get-with-duplicate-auth", b"GET / HTTP/1.1\r\n" + AUTH + AUTH + b"\r\n", 400),
    ("get-with-transfer-encoding", b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 405),
    ("lowercase-connect-bad-target", b"connect evil@host:443 HTTP/1.1\r\n\r\n", 405),
    ("bad-target-with-auth", connect_to("evil.com@sensor.azure-devices.net:443", AUTH), 400),
]


def test_hostile_table_is_big_enough() -> None:
    assert len(HOSTILE) >= 60
    assert len({name for name, _, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(
    ("raw", "status"), [(raw, st) for _, raw, st in HOSTILE], ids=[n for n, _, _ in HOSTILE]
)
def test_hostile_request_is_refused(raw: bytes, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        read_request(raw)
    assert caught.value.status == status
    # parse_head alone (no find_head_end in front) reaches the same verdict.
    with pytest.raises(RequestError) as direct:
        parse_head(raw)
    assert direct.value.status == status


@pytest.mark.parametrize("raw", [raw for _, raw, _ in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_reason_is_one_short_line_without_secrets(raw: bytes) -> None:
    for attempt in (read_request, parse_head):
        with pytest.raises(RequestError) as caught:
            attempt(raw)
        reason = caught.value.reason
        assert reason and len(reason) <= 100
        assert reason.isascii() and reason.isprintable()
        assert SECRET not in reason and "c2Vuc29y" not in reason
        assert str(caught.value) == reason


VALID_TARGETS: list[tuple[str, str, int, IPv4Address | IPv6Address | None]] = [
    ("sensor.azure-devices.net:443", "sensor.azure-devices.net", 443, None),
    ("HOST.Azure-Devices.NET.:443", "host.azure-devices.net", 443, None),
    ("download.microsoft.com:443", "download.microsoft.com", 443, None),
    ("localhost:1", "localhost", 1, None),
    ("a:65535", "a", 65535, None),
    ("1e100.net:443", "1e100.net", 443, None),
    ("0x7f.example:443", "0x7f.example", 443, None),
    ("xn--bcher-kva.example:443", "xn--bcher-kva.example", 443, None),
    ("a-b.c-d.example:8443", "a-b.c-d.example", 8443, None),
    ("a" * 63 + ".example:443", "a" * 63 + ".example", 443, None),
    ("10.0.0.1:443", "10.0.0.1", 443, IPv4Address("10.0.0.1")),
    ("0.0.0.0:443", "0.0.0.0", 443, IPv4Address("0.0.0.0")),
    ("255.255.255.255:65535", "255.255.255.255", 65535, IPv4Address("255.255.255.255")),
    ("[::1]:443", "::1", 443, IPv6Address("::1")),
    ("[0:0:0:0:0:0:0:1]:443", "::1", 443, IPv6Address("::1")),
    ("[2001:DB8::A]:443", "2001:db8::a", 443, IPv6Address("2001:db8::a")),
    (
        "[::ffff:127.0.0.1]:443",
        str(IPv6Address("::ffff:127.0.0.1")),
        443,
        IPv6Address("::ffff:127.0.0.1"),
    ),
]


@pytest.mark.parametrize(
    ("text", "host", "port", "ip"), VALID_TARGETS, ids=[v[0] for v in VALID_TARGETS]
)
def test_valid_target(
    text: str, host: str, port: int, ip: IPv4Address | IPv6Address | None
) -> None:
    target = parse_target(text)
    assert target == Target(host=host, port=port, ip=ip)
    assert read_request(connect_to(text)).target == target
    assert parse_target(target.authority) == target


def test_longest_valid_name_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert parse_target(name + ".:443").host == name


def test_lookalike_suffix_parses_as_the_other_host() -> None:
    """Not a parse error: the policy must see the real host and refuse it there."""
    target = parse_target("sensor.azure-devices.net.evil.com:443")
    assert target.host == "sensor.azure-devices.net.evil.com"
    assert target.ip is None


def test_ipv4_mapped_address_stays_ipv6() -> None:
    target = parse_target("[::ffff:10.1.2.3]:443")
    assert isinstance(target.ip, IPv6Address)
    assert target.ip.ipv4_mapped == IPv4Address("10.1.2.3")
    assert target.authority.startswith("[")


def test_authority() -> None:
    assert Target("h.example", 443, None).authority == "h.example:443"
    assert Target("10.0.0.1", 443, IPv4Address("10.0.0.1")).authority == "10.0.0.1:443"
    assert Target("2001:db8::1", 443, IPv6Address("2001:db8::1")).authority == "[2001:db8::1]:443"


def test_full_request() -> None:
    raw = (
        b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\n"
        b"Host: something-else.example:80\r\n"
        b"User-Agent:   sensor/24.1 \t\r\n" + AUTH + b"X-Empty:\r\n"
        b"X-Tab: a\tb\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    request = read_request(raw)
    assert request == Request(
        method="CONNECT",
        target=Target("sensor.azure-devices.net", 443, None),
        version="HTTP/1.1",
        headers=(
            ("host", "something-else.example:80"),
            ("user-agent", "sensor/24.1"),
            ("proxy-authorization", "Basic " + SECRET),
            ("x-empty", ""),
            ("x-tab", "a\tb"),
            ("x-latin", "café"),
            ("content-length", "0"),
        ),
        proxy_authorization="Basic " + SECRET,
    )
    assert parse_basic_credentials(request.proxy_authorization or "") == ("sensor", "s3cr3t")


def test_minimal_http_1_0_request() -> None:
    request = read_request(b"CONNECT [::1]:8443 HTTP/1.0\r\n\r\n")
    assert request.version == "HTTP/1.0"
    assert request.headers == ()
    assert request.proxy_authorization is None
    assert request.target == Target("::1", 8443, IPv6Address("::1"))


def test_bytes_after_the_head_belong_to_the_tunnel() -> None:
    head = connect_to("sensor.azure-devices.net:443", b"Host: x\r\n")
    tunnel = b"\x16\x03\x01\x00\x00\r\n\x00\n\r garbage"
    raw = head + tunnel
    end = find_head_end(raw, LIMIT)
    assert end == len(head)
    assert raw[end:] == tunnel
    assert parse_head(raw[:end]).target.host == "sensor.azure-devices.net"


# --- find_head_end -------------------------------------------------------------------------------


def test_find_head_end_byte_by_byte() -> None:
    raw = connect_to("sensor.azure-devices.net:443", b"Host: x\r\n", AUTH) + b"tunnel"
    head_len = len(raw) - len(b"tunnel")
    buf = bytearray()
    for index, byte in enumerate(raw):
        buf.append(byte)
        expected = head_len if index + 1 >= head_len else -1
        assert find_head_end(buf, LIMIT) == expected


def test_find_head_end_byte_by_byte_catches_a_bad_byte_at_once() -> None:
    raw = b"CONNECT sensor.azure-devices.net:443 HTTP/1.1\r\nHost: x\x00"
    for size in range(len(raw)):
        assert find_head_end(raw[:size], LIMIT) == -1
    with pytest.raises(RequestError) as caught:
        find_head_end(raw, LIMIT)
    assert caught.value.status == 400


def test_find_head_end_waits_after_a_pending_cr() -> None:
    assert find_head_end(b"CONNECT h.example:443 HTTP/1.1\r", LIMIT) == -1
    assert find_head_end(b"CONNECT h.example:443 HTTP/1.1\r\n\r", LIMIT) == -1


def test_head_exactly_at_the_limit_is_accepted() -> None:
    head = connect_to("h.example:443", b"X-Pad: ")
    head = head[:-2] + b"p" * 100 + b"\r\n\r\n"
    assert find_head_end(head, len(head)) == len(head)
    assert find_head_end(head + b"tunnel", len(head)) == len(head)


def test_head_one_byte_over_the_limit_is_431() -> None:
    head = connect_to("h.example:443", b"X-Pad: padding\r\n")
    with pytest.raises(RequestError) as caught:
        find_head_end(head, len(head) - 1)
    assert caught.value.status == 431
    assert caught.value.outcome == "bad_request"


def test_endless_headers_hit_431_at_the_limit() -> None:
    buf = b"CONNECT h.example:443 HTTP/1.1\r\n" + b"X-A: b\r\n" * 200
    assert find_head_end(buf[:1000], 1024) == -1
    with pytest.raises(RequestError) as caught:
        find_head_end(buf[:1024], 1024)
    assert caught.value.status == 431


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x16",  # TLS ClientHello
        b"\x00",
        b" ",
        b"\r\n",  # empty request line
        b"GE\n",
        b"GET\r",  # the request line ends before its target
        b"GET\rX",
        b"CONNECT  ",
        b"CONNECT h.example:443 HTTP/2",
        b"CONNECT h.example:443 HTTP/1.1 ",
        b"CONNECT h.example:443\r\n",
        b"CONNECT h\x7f",
        "CÖNNECT".encode(),
        b"CONNECT h.example:443 HTTP/1.1\r\nHost: x\r\n ",
        b"CONNECT h.example:443 HTTP/1.1\r\nHost: x\r\n\t",
    ],
)
def test_find_head_end_refuses_a_hopeless_prefix_at_once(prefix: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        find_head_end(prefix, LIMIT)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"C",
        b"CONNECT",
        b"CONNECT ",
        b"CONNECT h",
        b"CONNECT h.example:443 HTTP/1",
        b"CONNECT h.example:443 HTTP/1.1\r\n",
        b"CONNECT h.example:443 HTTP/1.1\r\nHost: x\r\n",
        b"GET / ",
        # Header syntax is judged by parse_head once the head is complete.
        b"CONNECT h.example:443 HTTP/1.1\r\nHost x\r\n",
    ],
)
def test_find_head_end_waits_for_a_plausible_prefix(prefix: bytes) -> None:
    assert find_head_end(prefix, LIMIT) == -1


# --- Basic credentials ---------------------------------------------------------------------------


def basic(payload: bytes) -> str:
    return "Basic " + base64.b64encode(payload).decode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (basic(b"sensor:s3cr3t"), ("sensor", "s3cr3t")),
        ("basic " + SECRET, ("sensor", "s3cr3t")),
        ("BASIC " + SECRET, ("sensor", "s3cr3t")),
        ("Basic    " + SECRET, ("sensor", "s3cr3t")),
        (" Basic " + SECRET + " ", ("sensor", "s3cr3t")),
        (basic(b"sensor:"), ("sensor", "")),
        (basic(b"sensor:pa:ss:word"), ("sensor", "pa:ss:word")),
        (basic("jürgen:pässwörd".encode()), ("jürgen", "pässwörd")),
        (basic("user:pass word\xa0".encode()), ("user", "pass word\xa0")),
    ],
)
def test_basic_credentials(value: str, expected: tuple[str, str]) -> None:
    assert parse_basic_credentials(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic",
        "Basic ",
        "Bearer " + SECRET,
        "Digest username=sensor",
        "Basic" + SECRET,
        "Basic\t" + SECRET,
        "Basic !!!!",
        "Basic " + SECRET.rstrip("="),  # missing padding
        "Basic " + SECRET + " extra",
        "Basic c2Vuc29y",  # "sensor": no colon
        basic(b":password"),  # empty user
        basic(b"\xff\xfe:password"),  # not UTF-8
        basic(b"sen\x00sor:pw"),
        basic(b"sensor:pw\r\nX-Injected: 1"),
        basic("sensor:pw\x85".encode()),  # C1 control
        "Basic " + "é" * 8,
        "Bäsic " + SECRET,
    ],
)
def test_basic_credentials_refused(value: str) -> None:
    assert parse_basic_credentials(value) is None


@given(st.text())
def test_basic_credentials_never_raise(value: str) -> None:
    result = parse_basic_credentials(value)
    assert result is None or (isinstance(result, tuple) and len(result) == 2)


# Cc is exactly the C0 and C1 controls and DEL, which RFC 7617 forbids; Cs cannot be UTF-8.
_CREDENTIAL_TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=":"), min_size=1
)


@given(_CREDENTIAL_TEXT, _CREDENTIAL_TEXT | st.just(""))
def test_basic_credentials_round_trip(user: str, password: str) -> None:
    value = basic(f"{user}:{password}".encode())
    assert parse_basic_credentials(value) == (user, password)


# --- responses and errors ------------------------------------------------------------------------


def split_response(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    return status_line, headers, body


def test_error_response_format() -> None:
    raw = error_response(400, "request line is not 'METHOD target HTTP/1.x'")
    assert raw == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 45\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"request line is not 'METHOD target HTTP/1.x'\n"
    )


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (400, "Bad Request"),
        (403, "Forbidden"),
        (405, "Method Not Allowed"),
        (407, "Proxy Authentication Required"),
        (408, "Request Timeout"),
        (431, "Request Header Fields Too Large"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    ],
)
def test_error_response_status_lines(status: int, phrase: str) -> None:
    status_line, headers, body = split_response(error_response(status, "why"))
    assert status_line == f"HTTP/1.1 {status} {phrase}"
    assert headers[-1] == ("Connection", "close")
    assert ("Content-Length", str(len(body))) in headers
    assert body == b"why\n"


def test_error_response_extra_headers_come_before_connection_close() -> None:
    _, headers, _ = split_response(
        error_response(407, "authentication required", PROXY_AUTHENTICATE)
    )
    assert headers == [
        ("Content-Type", "text/plain"),
        ("Content-Length", "24"),
        ("Proxy-Authenticate", 'Basic realm="connectproxy"'),
        ("Connection", "close"),
    ]
    _, headers, _ = split_response(error_response(405, "only CONNECT is supported", ALLOW_CONNECT))
    assert ("Allow", "CONNECT") in headers


def test_error_response_reason_cannot_break_the_framing() -> None:
    raw = error_response(502, "upstream said 407\r\nX-Injected: 1\r\n\r\nmore\x00 ünïcode")
    status_line, headers, body = split_response(raw)
    assert status_line == "HTTP/1.1 502 Bad Gateway"
    assert all(name != "X-Injected" for name, _ in headers)
    assert body.count(b"\n") == 1 and body.endswith(b"\n")
    assert body.isascii()
    assert ("Content-Length", str(len(body))) in headers


@pytest.mark.parametrize(
    "extra", [(("X-Bad\r\nInjected", "1"),), (("X-Bad", "1\r\nInjected: 1"),), (("", "x"),)]
)
def test_error_response_refuses_bad_extra_headers(extra: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError):
        error_response(400, "x", extra)


def test_error_response_refuses_unknown_status() -> None:
    with pytest.raises(ValueError):
        error_response(299, "x")


def test_established() -> None:
    assert ESTABLISHED == b"HTTP/1.1 200 Connection established\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, "bad_request"),
        (431, "bad_request"),
        (405, "method_not_allowed"),
        (408, "handshake_timeout"),
    ],
)
def test_request_error_outcome(status: int, outcome: str) -> None:
    error = RequestError(status, "reason")
    assert (error.status, error.outcome, error.reason) == (status, outcome, "reason")


def test_request_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(RequestError(431, "too large")))
    assert (error.status, error.outcome, str(error)) == (431, "bad_request", "too large")


def test_request_error_refuses_unknown_status() -> None:
    with pytest.raises(ValueError):
        RequestError(500, "not a request error")


# --- properties ----------------------------------------------------------------------------------

# Pieces of real requests, so random combinations get past the first byte often enough to
# exercise the deeper checks.
_FRAGMENTS = st.sampled_from(
    [
        b"CONNECT",
        b"GET",
        b"connect",
        b" ",
        b"\t",
        b"\r\n",
        b"\r",
        b"\n",
        b"\x00",
        b"\xff",
        b":",
        b"[",
        b"]",
        b"::1",
        b".",
        b"@",
        b"%",
        b"/",
        b"443",
        b"0",
        b"h.example",
        b"127.0.0.1",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"Host",
        b"Proxy-Authorization",
        b"Transfer-Encoding",
        b"Content-Length",
        b"Basic " + SECRET.encode(),
    ]
)
_HEADISH = st.lists(_FRAGMENTS, max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _HEADISH, st.integers(min_value=1, max_value=400))
def test_find_head_end_only_raises_request_error(buf: bytes, max_bytes: int) -> None:
    try:
        end = find_head_end(buf, max_bytes)
    except RequestError as error:
        assert error.status in (400, 431)
        return
    assert end == -1 or 4 <= end <= min(len(buf), max_bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _HEADISH | _HEADISH.map(lambda b: b + b"\r\n\r\n"))
def test_parse_head_only_raises_request_error(head: bytes) -> None:
    try:
        request = parse_head(head)
    except RequestError as error:
        assert error.status in (400, 405)
        assert SECRET not in error.reason
        return
    assert request.method == "CONNECT"


@settings(deadline=None)
@given(_HEADISH)
def test_find_head_end_and_parse_head_agree(buf: bytes) -> None:
    """A head that find_head_end delimits is one parse_head judges by the same byte rules."""
    try:
        end = find_head_end(buf, LIMIT)
    except RequestError:
        return
    if end == -1:
        return
    try:
        parse_head(buf[:end])
    except RequestError as error:
        assert error.status in (400, 405)


@given(st.text(max_size=80) | st.text("abcXYZ019:.-_[]%@/ ", max_size=40))
def test_parse_target_only_raises_request_error(text: str) -> None:
    try:
        target = parse_target(text)
    except RequestError as error:
        assert error.status == 400
        return
    # Whatever was accepted is already in normal form: parsing it again changes nothing.
    assert parse_target(target.authority) == target


_LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", fullmatch=True)
_LAST_LABEL = st.from_regex(r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", fullmatch=True)
_HOSTNAMES = st.builds(
    lambda labels, last, dot: ".".join([*labels, last]) + dot,
    st.lists(_LABEL, max_size=4),
    _LAST_LABEL,
    st.sampled_from(["", "."]),
).filter(lambda name: len(name.removesuffix(".")) <= 253)
_PORTS = st.integers(min_value=1, max_value=65535)


@given(_HOSTNAMES, _PORTS)
def test_generated_hostname_round_trips(name: str, port: int) -> None:
    target = parse_target(f"{name}:{port}")
    assert target == Target(name.lower().removesuffix("."), port, None)
    assert parse_target(target.authority) == target
    assert read_request(connect_to(f"{name}:{port}")).target == target


@given(st.ip_addresses(v=4), _PORTS)
def test_generated_ipv4_round_trips(ip: IPv4Address, port: int) -> None:
    target = parse_target(f"{ip}:{port}")
    assert target == Target(str(ip), port, ip)
    assert parse_target(target.authority) == target


@given(st.ip_addresses(v=6), _PORTS, st.booleans())
def test_generated_ipv6_round_trips(ip: IPv6Address, port: int, exploded: bool) -> None:
    text = ip.exploded.upper() if exploded else str(ip)
    target = parse_target(f"[{text}]:{port}")
    assert target == Target(str(ip), port, ip)
    assert parse_target(target.authority) == target


@given(_HOSTNAMES)
def test_normalisation_is_idempotent(name: str) -> None:
    once = normalise_hostname(name)
    assert normalise_hostname(once) == once


_HEADER_NAMES = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True).filter(
    lambda name: name.lower() not in ("proxy-authorization", "transfer-encoding", "content-length")
)
_HEADER_VALUES = st.from_regex(
    r"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?", fullmatch=True
) | st.just("")


@given(
    _HOSTNAMES,
    _PORTS,
    st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
)
def test_generated_request_round_trips(
    name: str, port: int, headers: list[tuple[str, str]], version: str
) -> None:
    raw = f"CONNECT {name}:{port} {version}\r\n".encode("latin-1")
    raw += b"".join(f"{key}: {value}\r\n".encode("latin-1") for key, value in headers)
    raw += b"\r\n"
    request = read_request(raw)
    assert request.version == version
    assert request.target == parse_target(f"{name}:{port}")
    assert request.headers == tuple((key.lower(), value) for key, value in headers)
    assert request.proxy_authorization is None


# ---- take_request: remembered heads -------------------------------------------------------------


def test_a_repeated_head_is_parsed_once_and_the_bytes_after_it_are_kept() -> None:
    head = connect_to("sensor.azure-devices.net:443", b"User-Agent: sensor/1.0\r\n")
    first = take_request(head + b"\x16\x03\x01", LIMIT)
    second = take_request(head, LIMIT)
    assert first is not None and second is not None
    assert first[0] is second[0]  # the same immutable Request, not a second parse
    assert first[0] == parse_head(head)
    assert (first[1], second[1]) == (b"\x16\x03\x01", b"")


def test_a_head_with_credentials_is_never_remembered() -> None:
    """The authenticator keeps no password in memory; the parser must not keep one either."""
    for name in (b"Proxy-Authorization", b"proxy-authorization", b"PROXY-AUTHORIZATION"):
        auth = name + b": Basic " + SECRET.encode() + b"\r\n"
        head = connect_to("sensor.azure-devices.net:443", auth)
        first, second = take_request(head, LIMIT), take_request(head, LIMIT)
        assert first is not None and second is not None
        assert first[0] is not second[0]
        assert first[0].proxy_authorization == f"Basic {SECRET}"


def test_a_long_head_is_not_remembered() -> None:
    head = connect_to("sensor.azure-devices.net:443", b"X-Pad: " + b"a" * 600 + b"\r\n")
    first, second = take_request(head, LIMIT), take_request(head, LIMIT)
    assert first is not None and second is not None
    assert first[0] is not second[0]


def test_a_bad_head_is_refused_every_time() -> None:
    head = connect_to("sensor.azure-devices.net:443")[:-2] + b"Bad Header\r\n\r\n"
    for _ in range(2):
        with pytest.raises(RequestError) as refused:
            take_request(head, LIMIT)
        assert refused.value.status == 400
