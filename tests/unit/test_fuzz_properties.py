"""Property tests that treat each parser the way the server uses it, not one function at a time.

tests/unit/wire/test_http.py, test_proxyproto.py and tests/unit/configfile/test_config.py already
check that each parser, called once on a whole input, raises nothing but its typed error. What is
new here is the glue:

- the allowlist end to end: a request head that the parser accepts and the policy allows must
  name a host that an independent reference matcher, reading the raw request line, also finds on
  the allowlist (and the reverse), under hostile spellings of the target;
- delivery in arbitrary pieces: the server calls `take_request` after every read and peeks the
  PROXY header in as many reads as the network chooses; the verdict must not depend on how the
  bytes were split, and the PROXY reader must never consume a byte past the header;
  `take_request` itself must agree with `find_head_end` then `parse_head`;
- near-valid inputs: byte mutations of the shipped, commented config and of real credentials.

Random bytes rarely get past the first check, so the strategies build inputs from fragments of
real requests and mutate valid ones.
"""

from __future__ import annotations

import base64
import ipaddress
import re

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from connectproxy.config.model import Allow, Client, Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import parse_config
from connectproxy.matching.domains import parse_domain_pattern
from connectproxy.matching.netset import IPAddress, IPNetwork
from connectproxy.policy.decide import Source, decide
from connectproxy.wire import proxyproto
from connectproxy.wire.hostnames import normalise_hostname
from connectproxy.wire.http import (
    Request,
    RequestError,
    find_head_end,
    parse_basic_credentials,
    parse_head,
    take_request,
)
from tests.support import REPO_ROOT

ROOT = REPO_ROOT
LIMIT = 8192

# ---- an independent reference for the allowlist ------------------------------------------------

PATTERNS = (".azure-devices.net", "*.blob.core.windows.net", "download.microsoft.com")
PORTS = frozenset({443, 8443})
NETWORKS = ("10.1.0.0/16", "2001:db8::/32")
ADMITTED = Source(ipaddress.ip_address("192.0.2.10"), 40000)

CONFIG = Config(
    clients=(Client("all", networks=(ipaddress.ip_network("0.0.0.0/0"),)),),
    allow=Allow(
        ports=PORTS,
        domains=tuple(parse_domain_pattern(p) for p in PATTERNS),
        networks=tuple(ipaddress.ip_network(n) for n in NETWORKS),
    ),
)

_REQUEST_LINE = re.compile(rb"CONNECT ([^ ]+) HTTP/1\.[01]\r\n")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_DNS_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z]+[a-z0-9-]*[a-z0-9]|[a-z]")


def reference_allows(raw_head: bytes) -> bool:
    """Would an allowlist reader that shares no code with connectproxy let this head through?

    It reads the target straight from the raw request line with its own rules: a bracketed IPv6
    literal or a dotted-quad IPv4 literal is checked against the networks by `ipaddress`; a name
    is compared label by label with each pattern's labels. Anything it does not understand is
    refused, so it can only be stricter than a correct implementation, never laxer.
    """
    line = _REQUEST_LINE.match(raw_head)
    if line is None:
        return False
    target = line.group(1).decode("ascii", "replace")
    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or port_text != str(int(port_text)):
        return False
    if int(port_text) not in PORTS:
        return False
    address: IPAddress | None = None
    if host.startswith("[") and host.endswith("]"):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
    elif _DOTTED_QUAD.fullmatch(host):
        address = ipaddress.IPv4Address(host)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in NETWORKS]
        return any(address.version == n.version and address in n for n in networks)
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        return False
    labels = name.split(".")
    if any(len(label) > 63 for label in labels):
        return False
    for pattern in PATTERNS:
        if pattern.startswith("*."):
            wanted, subdomains_only = pattern[2:].split("."), True
        elif pattern.startswith("."):
            wanted, subdomains_only = pattern[1:].split("."), False
        else:
            if labels == pattern.split("."):
                return True
            continue
        if labels[-len(wanted) :] == wanted and (len(labels) > len(wanted) or not subdomains_only):
            return True
    return False


def test_reference_matcher_on_known_cases() -> None:
    """The oracle itself, on the cases SPEC section 3 spells out."""

    def head(target: str) -> bytes:
        return f"CONNECT {target} HTTP/1.1\r\n\r\n".encode()

    assert reference_allows(head("azure-devices.net:443"))
    assert reference_allows(head("A.Azure-Devices.NET.:8443"))
    assert not reference_allows(head("evilazure-devices.net:443"))
    assert not reference_allows(head("azure-devices.net.evil.com:443"))
    assert not reference_allows(head("blob.core.windows.net:443"))
    assert reference_allows(head("x.blob.core.windows.net:443"))
    assert not reference_allows(head("a.download.microsoft.com:443"))
    assert not reference_allows(head("download.microsoft.com:80"))
    assert reference_allows(head("10.1.2.3:443"))
    assert reference_allows(head("[::ffff:10.1.2.3]:443"))
    assert reference_allows(head("[2001:db8::1]:443"))
    assert not reference_allows(head("10.2.0.1:443"))
    assert not reference_allows(head("010.1.2.3:443"))


# Targets built from pieces an attacker would combine: allowed names and their look-alikes, case,
# dots, userinfo, escapes, ports in several spellings, and IP literals in many forms.
_HOST_PIECES = st.sampled_from(
    [
        "azure-devices.net",
        "sensor.azure-devices.net",
        "AZURE-DEVICES.NET",
        "evilazure-devices.net",
        "azure-devices.net.evil.com",
        "blob.core.windows.net",
        "x.blob.core.windows.net",
        "download.microsoft.com",
        "a.download.microsoft.com",
        "download.microsoft.com.evil",
        "evil.com",
        "xn--sensor-9ya.azure-devices.net",
        "10.1.2.3",
        "10.2.0.1",
        "010.1.2.3",
        "167838211",
        "0x0a010203",
        "10.1.515",
        "[::ffff:10.1.2.3]",
        "[::ffff:a01:203]",
        "[2001:db8::1]",
        "[2001:DB8:0:0:0:0:0:1]",
        "[::1]",
        "[64:ff9b::a01:203]",
        "[fe80::1%25eth0]",
        "127.0.0.1",
    ]
)
_HOST_MUTATIONS = st.sampled_from(
    ["", ".", "..", "a.", "-", "_", "@", "user:pw@", "%2e", "*.", " ", "\t", "\\", "/", "é", "。"]
)
_PORT_TEXTS = st.sampled_from(["443", "8443", "0443", "+443", "443 ", "80", "", "65979", "4430"])


@st.composite
def hostile_targets(draw: st.DrawFn) -> str:
    host = draw(_HOST_PIECES)
    if draw(st.booleans()):
        flips = draw(st.lists(st.booleans(), min_size=len(host), max_size=len(host)))
        host = "".join(c.upper() if f else c for c, f in zip(host, flips, strict=True))
    prefix = draw(_HOST_MUTATIONS) if draw(st.booleans()) else ""
    suffix = draw(_HOST_MUTATIONS) if draw(st.booleans()) else ""
    return f"{prefix}{host}{suffix}:{draw(_PORT_TEXTS)}"


_HEADER_LINES = st.sampled_from(
    [
        b"Host: evil.com:443\r\n",
        b"Host: sensor.azure-devices.net:443\r\n",
        b"Proxy-Authorization: Basic c2Vuc29yOnB3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 0\r\n",
        b"Content-Length: 10\r\n",
        b"X-Forwarded-For: 10.1.2.3\r\n",
        b"Connection: keep-alive\r\n",
    ]
)


@st.composite
def hostile_heads(draw: st.DrawFn) -> bytes:
    target = draw(hostile_targets()).encode("utf-8")
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    headers = b"".join(draw(st.lists(_HEADER_LINES, max_size=3)))
    return b"CONNECT " + target + b" " + version + b"\r\n" + headers + b"\r\n"


def _verdict(raw: bytes) -> Request | int:
    """What the server would make of `raw` delivered at once: a request, or the error status."""
    try:
        end = find_head_end(raw, LIMIT)
        if end < 0:
            return 0
        return parse_head(raw[:end])
    except RequestError as error:
        return error.status


@settings(max_examples=1500, deadline=None)
@given(hostile_heads())
@example(b"CONNECT sensor.azure-devices.net.:443 HTTP/1.1\r\n\r\n")
@example(b"CONNECT [::ffff:10.1.2.3]:443 HTTP/1.1\r\n\r\n")
def test_allowed_target_matches_the_reference_allowlist(raw: bytes) -> None:
    verdict = _verdict(raw)
    if not isinstance(verdict, Request):
        return
    decision = decide(verdict.target, ADMITTED, None, CONFIG)
    assert decision.allowed == reference_allows(raw), (raw, decision.reason)


# ---- delivery in pieces -----------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        b"CONNECT ",
        b"GET ",
        b"sensor.azure-devices.net:443",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\r",
        b"\n",
        b"Host: x",
        b"Proxy-Authorization: Basic YTpi",
        b" ",
        b"\t",
        b"\x00",
        b"\x80",
        b"X" * 50,
    ]
)


def _read_in_pieces(data: bytes, cuts: list[int], limit: int) -> Request | int:
    """The server's loop (`Server._read_request`): after every read, try to take a request from
    everything received so far."""
    received = b""
    positions = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    start = 0
    for stop in positions:
        received += data[start:stop]
        start = stop
        try:
            taken = take_request(received, limit)
            if taken is not None:
                return taken[0]
        except RequestError as error:
            return error.status
    return 0


def _two_steps(data: bytes, limit: int) -> tuple[Request, bytes] | int | None:
    """find_head_end, then parse_head on exactly the head: what take_request shortens."""
    try:
        end = find_head_end(data, limit)
        return None if end < 0 else (parse_head(data[:end]), data[end:])
    except RequestError as error:
        return error.status


def _one_step(data: bytes, limit: int) -> tuple[Request, bytes] | int | None:
    try:
        return take_request(data, limit)
    except RequestError as error:
        return error.status


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(_FRAGMENTS, max_size=20).map(b"".join) | hostile_heads(),
    st.binary(max_size=8),
    st.integers(min_value=16, max_value=300),
)
def test_take_request_agrees_with_find_head_end_then_parse_head(
    data: bytes, after: bytes, limit: int
) -> None:
    """Same request and early data, same status, or the same wait for more bytes."""
    raw = data + after
    assert _one_step(raw, limit) == _two_steps(raw, limit)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_FRAGMENTS, max_size=20).map(b"".join) | hostile_heads(),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.integers(min_value=16, max_value=300),
)
def test_verdict_does_not_depend_on_how_the_head_is_split(
    data: bytes, cuts: list[int], limit: int
) -> None:
    """Reads of any sizes give the verdict of one read: the same request, or the same status
    (the first problem in the bytes is the first one seen, however they arrive)."""
    assert _read_in_pieces(data, cuts, limit) == _read_in_pieces(data, [], limit)


def _proxy_header_reader(stream: bytes, reads: list[int], mode: proxyproto.ProxyHeaderMode) -> int:
    """The server's PROXY reader (`Server._read_proxy_header`): peek what has arrived (at most
    MAX_V2 bytes), parse it after what was already consumed, and consume only header bytes.
    Returns how many bytes were consumed when the header was found, or -1 once refused."""
    arrived = 0
    consumed = 0
    seen = b""
    for size in [*reads, len(stream)]:
        arrived = min(len(stream), max(arrived, consumed) + max(size, 1))
        while True:
            peeked = stream[consumed:arrived][: proxyproto.MAX_V2]
            if not peeked:
                break
            try:
                header = proxyproto.parse_proxy_header(seen + peeked, mode)
            except proxyproto.ProxyHeaderError:
                return -1
            if header is None:
                seen += peeked
                consumed += len(peeked)
                continue
            consumed += header.length - len(seen)
            return consumed
    return -1


_V1_LINES = st.sampled_from(
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN whatever 1 2 3\r\n",
    ]
)
_V2_HEADERS = st.builds(
    lambda tlvs: (
        proxyproto.V2_SIGNATURE
        + b"\x21\x11"
        + (12 + len(tlvs)).to_bytes(2, "big")
        + bytes([192, 0, 2, 1, 198, 51, 100, 2])
        + (56324).to_bytes(2, "big")
        + (443).to_bytes(2, "big")
        + tlvs
    ),
    st.lists(
        st.binary(max_size=30).map(lambda v: b"\x04" + len(v).to_bytes(2, "big") + v), max_size=3
    ).map(b"".join),
)


@settings(max_examples=400, deadline=None)
@given(
    _V1_LINES | _V2_HEADERS,
    st.sampled_from([b"", b"CONNECT a:443 HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00", b"\r\n"]),
    st.lists(st.integers(min_value=1, max_value=60), max_size=10),
)
def test_proxy_header_reader_consumes_exactly_the_header(
    header: bytes, after: bytes, reads: list[int]
) -> None:
    """Whatever the read sizes, the reader stops at the header's last byte: the request (or a TLS
    ClientHello) behind it is left in the socket for the next layer."""
    assert _proxy_header_reader(header + after, reads, "any") == len(header)


@settings(max_examples=400, deadline=None)
@given(
    _V1_LINES | _V2_HEADERS,
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=3),
    st.lists(st.integers(min_value=1, max_value=60), max_size=10),
    st.sampled_from(["v1", "v2", "any"]),
)
def test_proxy_header_reader_agrees_with_a_whole_parse(
    header: bytes,
    changes: list[tuple[int, int]],
    reads: list[int],
    mode: proxyproto.ProxyHeaderMode,
) -> None:
    """A mutated header read in pieces gets the verdict the parser gives it read whole."""
    data = bytearray(header + b"CONNECT a:443 HTTP/1.1\r\n\r\n")
    for position, value in changes:
        data[position % len(data)] = value
    stream = bytes(data)
    try:
        whole = proxyproto.parse_proxy_header(stream, mode)
    except proxyproto.ProxyHeaderError:
        whole = None
    expected = -1 if whole is None else whole.length
    assert _proxy_header_reader(stream, reads, mode) == expected


# ---- host names -------------------------------------------------------------------------------

_NAMEISH = st.lists(
    st.sampled_from(["a", "Z", "0", "9", "-", ".", "_", "x", "xn--", "0x", "é", "\u3002", "*"]),
    max_size=30,
).map("".join)


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=300) | _NAMEISH)
def test_normalise_hostname_is_idempotent_and_total(text: str) -> None:
    try:
        once = normalise_hostname(text)
    except ValueError:
        return
    assert normalise_hostname(once) == once
    assert normalise_hostname(once + ".") == once
    assert normalise_hostname(once.upper()) == once
    assert once == once.lower() and once.isascii() and not once.endswith(".")
    assert 1 <= len(once) <= 253
    assert all(1 <= len(label) <= 63 for label in once.split("."))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["", ".", "*."]), st.text(max_size=80) | _NAMEISH)
def test_domain_patterns_match_their_own_domain_consistently(prefix: str, text: str) -> None:
    try:
        pattern = parse_domain_pattern(prefix + text)
    except ValueError:
        return
    domain = pattern.domain
    assert normalise_hostname(domain) == domain
    assert pattern.matches(domain) is (pattern.kind != "subdomains")
    assert pattern.matches("sub." + domain) is (pattern.kind != "exact")
    assert not pattern.matches("sub" + domain)  # a look-alike with no dot between
    assert not pattern.matches(domain + ".lookalike-" + domain.rsplit(".", 1)[-1])


# ---- Basic credentials ------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=60),
    st.sampled_from(["Basic ", "basic ", "BASIC  ", " Basic ", "Basic\t", "Bearer ", ""]),
    st.sampled_from(["", "=", "==", " ", "\t", "\x00", "é"]),
)
def test_basic_decoder_on_any_decoded_bytes(payload: bytes, scheme: str, tail: str) -> None:
    """Header values reach the decoder as latin-1 text of arbitrary bytes; whatever they hold, the
    result is None or a clean (user, password) that re-encodes to the same token."""
    value = scheme + base64.b64encode(payload).decode("ascii") + tail
    result = parse_basic_credentials(value)
    if result is None:
        return
    user, password = result
    assert user and ":" not in user
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user + password)
    assert f"{user}:{password}".encode() == payload


# ---- the config loader on near-valid input ------------------------------------------------------

SHIPPED_CONFIG = (ROOT / "config" / "connectproxy.yaml").read_text(encoding="utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SHIPPED_CONFIG) - 1),
            st.integers(min_value=0, max_value=3),
            st.sampled_from([*" \n\t-:[]{}\"'#&*!|>.0x?@%\x00é", "", "10.0.0.0/33", "::"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_shipped_config_loads_or_raises_config_error(
    edits: list[tuple[int, int, str]],
) -> None:
    text = SHIPPED_CONFIG
    for position, remove, insert in edits:
        text = text[:position] + insert + text[position + remove :]
    assume(text != SHIPPED_CONFIG)
    try:
        config = parse_config(text, "mutated.yaml", ROOT / "config")
    except ConfigError as error:
        message = str(error)
        assert message.startswith("mutated.yaml")
        assert "Traceback" not in message
        return
    # Whatever loaded is a usable policy: every pattern is normalised, every port in range.
    for pattern in config.allow.domains:
        assert normalise_hostname(pattern.domain) == pattern.domain
    assert all(1 <= port <= 65535 for port in config.allow.ports)
