"""Tests for the PROXY protocol parser: hand-made headers, incremental feeding, and properties.

Headers are built here from the byte layout in HAProxy's proxy-protocol.txt, independently of
the parser, so a round trip checks the parser against the specification rather than itself.
"""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.wire.proxyproto import (
    MAX_V1,
    MAX_V2,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderMode,
    parse_proxy_header,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL, PROXY = 0x20, 0x21  # version 2 in the high nibble, command in the low one
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
REQUEST = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
MODES: tuple[ProxyHeaderMode, ...] = ("v1", "v2", "any")


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(ver_cmd: int, family: int, block: bytes, length: int | None = None) -> bytes:
    """A version 2 header; `length` overrides the length field to build broken ones."""
    declared = len(block) if length is None else length
    return SIGNATURE + bytes([ver_cmd, family]) + declared.to_bytes(2, "big") + block


def v2_tcp(source: tuple[str, int], destination: tuple[str, int], tlvs: bytes = b"") -> bytes:
    src, dst = ip_address(source[0]), ip_address(destination[0])
    family = TCP4 if src.version == 4 else TCP6
    ports = source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    return v2(PROXY, family, src.packed + dst.packed + ports + tlvs)


def parse(buf: bytes | bytearray, mode: ProxyHeaderMode = "any") -> ProxyHeader | None:
    return parse_proxy_header(buf, mode)


def outcome(buf: bytes, mode: ProxyHeaderMode) -> ProxyHeader | str | None:
    """The parser's answer with an error folded into a value, for comparing prefixes."""
    try:
        return parse_proxy_header(buf, mode)
    except ProxyHeaderError:
        return "error"


# --- version 1 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["v1", "any"])
def test_v1_tcp4(mode: ProxyHeaderMode) -> None:
    header = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", mode)
    assert header == ProxyHeader(
        version=1,
        source=(IPv4Address("192.168.0.1"), 56324),
        destination=(IPv4Address("192.168.0.11"), 443),
        length=47,
    )


def test_v1_tcp6_with_request_after_it() -> None:
    line = b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n"
    header = parse(line + REQUEST)
    assert header is not None
    assert header.source == (IPv6Address("2001:db8::1"), 0)
    assert header.destination == (IPv6Address("2001:db8::2"), 65535)
    assert header.length == len(line)
    assert (line + REQUEST)[header.length :] == REQUEST


def test_v1_ipv4_mapped_source_is_returned_as_sent() -> None:
    header = parse(b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n")
    assert header is not None and header.source is not None
    assert header.source[0] == IPv6Address("::ffff:10.0.0.1")


def test_v1_longest_tcp6_line_fits() -> None:
    full = ":".join(["ffff"] * 8).encode()
    line = b"PROXY TCP6 " + full + b" " + full + b" 65535 65535\r\n"
    assert len(line) == 104
    header = parse(line, "v1")
    assert header is not None and header.length == 104


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
        b"PROXY UNKNOWN  anything at all, even\tthis \x00\xff\r\n",
    ],
)
def test_v1_unknown_uses_the_peer(line: bytes) -> None:
    assert parse(line + REQUEST, "v1") == ProxyHeader(1, None, None, len(line))


def test_v1_unknown_at_the_length_limit() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 16) + b"\r\n"
    assert len(line) == MAX_V1
    assert parse(line) == ProxyHeader(1, None, None, MAX_V1)


def test_v1_without_crlf_at_108_bytes_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 14)
    assert len(line) == MAX_V1
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line + b"\r\n")
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line)
    # A CR as the 107th byte would need the LF as the 108th: refused without waiting for it.
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line[:-1] + b"\r")
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line[:-1] + b"\r\n")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="double space after PROXY"),
        pytest.param(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", id="double space between addresses"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", id="trailing space"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", id="missing port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", id="extra field"),
        pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", id="unknown protocol"),
        pytest.param(b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", id="lower-case protocol"),
        pytest.param(b"PROXY UNKNOWNX\r\n", id="word after UNKNOWN without space"),
        pytest.param(b"PROXY \r\n", id="empty protocol"),
        pytest.param(b"PROXY\r\n", id="no protocol"),
        pytest.param(b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", id="leading zero octet"),
        pytest.param(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", id="octet over 255"),
        pytest.param(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", id="three octets"),
        pytest.param(b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", id="five octets"),
        pytest.param(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", id="IPv6 in TCP4"),
        pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", id="IPv4 in TCP6"),
        pytest.param(b"PROXY TCP6 ::1 ::1::2 1 2\r\n", id="two double colons"),
        pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", id="IPv6 scope"),
        pytest.param(b"PROXY TCP6 ::g ::1 1 2\r\n", id="not hex"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", id="port 65536"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", id="port leading zero"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", id="negative port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", id="port with sign"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", id="LF without CR"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n", id="CR without LF"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\t\r\n", id="tab"),
        pytest.param("PROXY TCP4 1.2.3.٤ 5.6.7.8 1 2\r\n".encode(), id="non-ASCII digit"),
    ],
)
def test_v1_malformed(line: bytes) -> None:
    for mode in ("v1", "any"):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(line + REQUEST, mode)


@pytest.mark.parametrize(
    "partial",
    [
        b"PROXY TCP4 01",
        b"PROXY TCP4 1.2.3.256",
        b"PROXY TCP4 1.2.3.4  ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536",
        b"PROXY TCP6 ::1%",
        b"PROXY TCP7",
        b"PROXY UNKNOWN\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r",
    ],
)
def test_v1_hopeless_prefix_is_refused_without_waiting(partial: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(partial, "v1")


def test_v1_error_names_the_bad_field() -> None:
    with pytest.raises(ProxyHeaderError, match=r"port b'65536'"):
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n")
    with pytest.raises(ProxyHeaderError, match="empty field"):
        parse(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n")


# --- version 2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["v2", "any"])
def test_v2_tcp4(mode: ProxyHeaderMode) -> None:
    header_bytes = v2_tcp(("192.0.2.1", 56324), ("198.51.100.2", 3128))
    assert len(header_bytes) == 28
    assert parse(header_bytes + REQUEST, mode) == ProxyHeader(
        version=2,
        source=(IPv4Address("192.0.2.1"), 56324),
        destination=(IPv4Address("198.51.100.2"), 3128),
        length=28,
    )


def test_v2_tcp6_with_tlvs_and_request() -> None:
    tlvs = (
        tlv(0x02, b"proxy.example")  # AUTHORITY
        + tlv(0x04, b"")  # NOOP, empty
        + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))  # SSL with a sub-TLV
        + tlv(0xEA, b"vpce-0123456789abcdef")  # custom range, as a cloud load balancer sends
    )
    header_bytes = v2_tcp(("2001:db8::1", 1), ("::ffff:10.1.2.3", 65535), tlvs)
    header = parse(header_bytes + REQUEST, "v2")
    assert header == ProxyHeader(
        version=2,
        source=(IPv6Address("2001:db8::1"), 1),
        destination=(IPv6Address("::ffff:10.1.2.3"), 65535),
        length=16 + 36 + len(tlvs),
    )
    assert (header_bytes + REQUEST)[header.length :] == REQUEST


@pytest.mark.parametrize(
    ("ver_cmd", "family", "block"),
    [
        pytest.param(LOCAL, UNSPEC, b"", id="LOCAL health check"),
        pytest.param(LOCAL, TCP4, bytes(12), id="LOCAL with an address block"),
        pytest.param(LOCAL, 0xFF, b"\xff" * 5, id="LOCAL ignores family and block"),
        pytest.param(PROXY, UNSPEC, b"", id="PROXY UNSPEC"),
        pytest.param(PROXY, UNSPEC, b"ignored", id="PROXY UNSPEC with ignored bytes"),
        pytest.param(PROXY, UDP4, bytes(12), id="UDP over IPv4"),
        pytest.param(PROXY, UDP6, bytes(36) + tlv(1, b"h2"), id="UDP over IPv6"),
        pytest.param(PROXY, UNIX_STREAM, bytes(216), id="UNIX stream"),
        pytest.param(PROXY, UNIX_DGRAM, bytes(216), id="UNIX datagram"),
    ],
)
def test_v2_without_a_usable_address_uses_the_peer(ver_cmd: int, family: int, block: bytes) -> None:
    header_bytes = v2(ver_cmd, family, block)
    assert parse(header_bytes + REQUEST, "v2") == ProxyHeader(2, None, None, len(header_bytes))


@pytest.mark.parametrize(
    "header_bytes",
    [
        pytest.param(b"\r\n\r\n\x00\r\nQUIT\r" + bytes(16), id="bad signature"),
        pytest.param(v2(0x11, TCP4, bytes(12)), id="version 1 nibble"),
        pytest.param(v2(0x31, TCP4, bytes(12)), id="version 3 nibble"),
        pytest.param(v2(0x22, TCP4, bytes(12)), id="command 2"),
        pytest.param(v2(0x2F, TCP4, bytes(12)), id="command 15"),
        pytest.param(v2(PROXY, 0x13, bytes(12)), id="transport 3"),
        pytest.param(v2(PROXY, 0x41, bytes(12)), id="family 4"),
        pytest.param(v2(PROXY, 0x01, bytes(12)), id="UNSPEC family with STREAM"),
        pytest.param(v2(PROXY, TCP4, bytes(11)), id="length too small for AF_INET"),
        pytest.param(v2(PROXY, TCP6, bytes(35)), id="length too small for AF_INET6"),
        pytest.param(v2(PROXY, UNIX_STREAM, bytes(215)), id="length too small for AF_UNIX"),
        pytest.param(v2(PROXY, TCP4, bytes(12) + b"\x01"), id="one byte of TLV"),
        pytest.param(v2(PROXY, TCP4, bytes(12) + b"\x01\x00"), id="two bytes of TLV"),
        pytest.param(v2(PROXY, TCP4, bytes(12) + b"\x01\x00\x05abcd"), id="truncated TLV"),
        pytest.param(
            v2(PROXY, TCP6, bytes(36) + tlv(2, b"ok") + b"\x04\xff\xff"), id="TLV past the end"
        ),
        pytest.param(v2(PROXY, TCP4, bytes(MAX_V2)), id="over the size limit"),
    ],
)
def test_v2_malformed(header_bytes: bytes) -> None:
    for mode in ("v2", "any"):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(header_bytes + REQUEST, mode)


def test_v2_at_the_size_limit() -> None:
    block = bytes(12) + tlv(0x04, bytes(MAX_V2 - 16 - 12 - 3))
    header_bytes = v2(PROXY, TCP4, block)
    assert len(header_bytes) == MAX_V2
    header = parse(header_bytes, "v2")
    assert header is not None and header.length == MAX_V2


@pytest.mark.parametrize(
    ("partial", "reason"),
    [
        (SIGNATURE + b"\x11", "version"),
        (SIGNATURE + b"\x23", "command"),
        (SIGNATURE + b"\x21\x99", "family"),
        (SIGNATURE + b"\x21\x11\x00\x0b", "too short"),
        (SIGNATURE + b"\x21\x11\xff\xff", "more than"),
        (v2(PROXY, TCP4, bytes(12) + b"\x02\x00\x09", length=12 + 3 + 8), "runs past"),
    ],
)
def test_v2_hopeless_prefix_is_refused_without_waiting(partial: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(partial, "v2")


def test_v2_declared_length_is_awaited() -> None:
    header_bytes = v2_tcp(("10.0.0.1", 1), ("10.0.0.2", 2), tlv(0xE0, bytes(300)))
    assert parse(header_bytes[:-1], "v2") is None
    assert parse(header_bytes, "v2") is not None


# --- modes and foreign protocols ----------------------------------------------------------------


def test_v1_header_when_v2_is_required() -> None:
    with pytest.raises(ProxyHeaderError, match="v1 header, but this listener requires v2"):
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v2")


def test_v2_header_when_v1_is_required() -> None:
    with pytest.raises(ProxyHeaderError, match="v2 header, but this listener requires v1"):
        parse(v2_tcp(("1.2.3.4", 1), ("5.6.7.8", 2)), "v1")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "first_bytes",
    [
        pytest.param(b"C", id="CONNECT"),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\n", id="CONNECT line"),
        pytest.param(b"PO", id="POST"),
        pytest.param(b"PUT / HTTP/1.1\r\n", id="PUT"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01", id="TLS ClientHello"),
        pytest.param(b"\r\n\r\n\r", id="blank lines"),
        pytest.param(b"\x00", id="NUL"),
    ],
)
def test_other_protocols_are_refused_on_their_first_bytes(
    first_bytes: bytes, mode: ProxyHeaderMode
) -> None:
    with pytest.raises(ProxyHeaderError, match="expected a PROXY protocol"):
        parse(first_bytes, mode)


@pytest.mark.parametrize("mode", MODES)
def test_empty_buffer_needs_more(mode: ProxyHeaderMode) -> None:
    assert parse(b"", mode) is None


def test_bytearray_is_accepted() -> None:
    assert parse(bytearray(b"PROXY UNKNOWN\r\n")) == ProxyHeader(1, None, None, 15)
    assert parse(bytearray(v2(LOCAL, UNSPEC, b""))) == ProxyHeader(2, None, None, 16)


def test_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        parse_proxy_header(b"PROXY UNKNOWN\r\n", "off")  # type: ignore[arg-type]


# --- incremental feeding ------------------------------------------------------------------------

FEEDING_CASES = [
    pytest.param(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "v1", id="v1 TCP4"),
    pytest.param(b"PROXY TCP6 ::1 2001:db8::2 1 2\r\n", "any", id="v1 TCP6"),
    pytest.param(b"PROXY UNKNOWN whatever\r\n", "any", id="v1 UNKNOWN"),
    pytest.param(v2_tcp(("10.0.0.1", 1), ("10.0.0.2", 2)), "v2", id="v2 TCP4"),
    pytest.param(
        v2_tcp(("::1", 1), ("::2", 2), tlv(1, b"h2") + tlv(5, b"id")), "any", id="v2 TCP6 TLVs"
    ),
    pytest.param(v2(LOCAL, UNSPEC, b""), "v2", id="v2 LOCAL"),
    pytest.param(v2(PROXY, UNIX_STREAM, bytes(216)), "any", id="v2 UNIX"),
]


@pytest.mark.parametrize(("header_bytes", "mode"), FEEDING_CASES)
def test_byte_by_byte_feeding(header_bytes: bytes, mode: ProxyHeaderMode) -> None:
    stream = header_bytes + REQUEST
    for end in range(len(header_bytes)):
        assert parse(stream[:end], mode) is None, f"answered after {end} bytes"
    complete = parse(header_bytes, mode)
    assert complete is not None and complete.length == len(header_bytes)
    for end in range(len(header_bytes), len(stream) + 1):
        assert parse(stream[:end], mode) == complete


# --- properties ---------------------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
trailing = st.binary(max_size=64)


def address_text(address: IPv4Address | IPv6Address, exploded: bool) -> bytes:
    return (address.exploded if exploded else address.compressed).encode()


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A header the specification allows, built by hand, with the answer it must produce."""
    version = draw(st.sampled_from([1, 2]))
    use_v6 = draw(st.booleans())
    source = (draw(ipv6 if use_v6 else ipv4), draw(ports))
    destination = (draw(ipv6 if use_v6 else ipv4), draw(ports))
    if version == 1:
        exploded = draw(st.booleans())
        fields = [
            b"TCP6" if use_v6 else b"TCP4",
            address_text(source[0], exploded),
            address_text(destination[0], exploded),
            str(source[1]).encode(),
            str(destination[1]).encode(),
        ]
        data = b"PROXY " + b" ".join(fields) + b"\r\n"
    else:
        tlvs = draw(
            st.lists(st.builds(tlv, st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(
                b"".join
            )
        )
        data = v2_tcp((str(source[0]), source[1]), (str(destination[0]), destination[1]), tlvs)
    return data, ProxyHeader(version, source, destination, len(data))


@given(valid_headers(), trailing)
def test_valid_headers_round_trip(case: tuple[bytes, ProxyHeader], after: bytes) -> None:
    data, expected = case
    mode: ProxyHeaderMode = "v1" if expected.version == 1 else "v2"
    assert parse_proxy_header(data + after, mode) == expected
    assert parse_proxy_header(data + after, "any") == expected
    assert parse_proxy_header(data[:-1], "any") is None


# Plain random bytes almost never get past the first byte, so some start with a signature.
random_input = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=120).map(lambda rest: b"PROXY " + rest),
    st.binary(max_size=120).map(lambda rest: SIGNATURE + rest),
    st.binary(max_size=120).map(lambda rest: SIGNATURE + b"\x21" + rest),
)


@settings(max_examples=300)
@given(random_input, st.sampled_from(MODES))
def test_random_bytes_only_ever_give_a_header_none_or_error(
    data: bytes, mode: ProxyHeaderMode
) -> None:
    try:
        header = parse_proxy_header(data, mode)
    except ProxyHeaderError:
        return
    if header is not None:
        assert header.version in (1, 2)
        assert 0 < header.length <= len(data)


def mutated(data: bytes, position: int, value: int) -> bytes:
    index = position % len(data)
    return data[:index] + bytes([value]) + data[index + 1 :]


@settings(max_examples=300)
@given(
    valid_headers(),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    trailing,
    st.sampled_from(MODES),
)
def test_answers_are_consistent_across_prefixes(
    case: tuple[bytes, ProxyHeader],
    changes: list[tuple[int, int]],
    after: bytes,
    mode: ProxyHeaderMode,
) -> None:
    """Feeding more bytes never takes back an answer: an error stays an error, a header stays.

    A few bytes of a valid header are overwritten so that the parser meets near-valid input,
    which random bytes rarely reach.
    """
    data = case[0]
    for position, value in changes:
        data = mutated(data, position, value)
    data += after
    answers = [outcome(data[:end], mode) for end in range(len(data) + 1)]
    for earlier, later in itertools.pairwise(answers):
        if earlier is not None:
            assert later == earlier
    final = answers[-1]
    if isinstance(final, ProxyHeader):
        assert final.length <= len(data)
        assert answers[final.length] == final
        assert answers[final.length - 1] is None
