"""A sans-IO parser for HAProxy's PROXY protocol header, versions 1 (text) and 2 (binary).

A load balancer in front of the proxy opens its own TCP connection to us, so the socket's peer is
the load balancer. The PROXY header it sends first tells us who the real client is, and admission
by source address depends on it. That makes this parser a security boundary: it is strict (a
sloppy header is refused, never guessed at), it never needs more than a small bounded buffer, and
it answers as early as it can, so a client that is not speaking the protocol at all (an HTTP
request line, a TLS ClientHello) is refused on its first bytes instead of hanging until a timeout.

The parser does no I/O. The caller keeps reading into one buffer and calls `parse_proxy_header`
after each read until it returns a header (the bytes after `header.length` are the start of the
HTTP request) or raises `ProxyHeaderError` (close the connection without an HTTP answer).

Reference: HAProxy's doc/proxy-protocol.txt. Choices where it leaves room are noted below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

__all__ = [
    "MAX_V1",
    "MAX_V2",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderMode",
    "parse_proxy_header",
]

ProxyHeaderMode = Literal["v1", "v2", "any"]
Address = tuple[IPv4Address | IPv6Address, int]

# The longest legal v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
MAX_V1 = 107
# The v2 length field could announce 64 KiB. Real senders add a few small TLVs (an SNI, a VPC
# endpoint id, a unique id of at most 128 bytes), so anything beyond 4 KiB of address block and
# TLVs is refused rather than buffered for a peer that might be hostile.
MAX_V2_PAYLOAD = 4096
MAX_V2 = 16 + MAX_V2_PAYLOAD

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyHeaderError(Exception):
    """The bytes received cannot be a valid PROXY header; the text says why, for the log.

    The connection must be closed without any HTTP answer: the peer is either misconfigured or
    not the trusted load balancer, and neither should learn anything from us.
    """


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a complete header says about the connection.

    `source` and `destination` are None when the header deliberately carries no usable client
    address (v1 UNKNOWN; v2 LOCAL, which load balancers use for health checks; v2 with an
    unspecified, UNIX or datagram family): the caller then uses the socket's own peer, as the
    protocol specification requires. IPv4-mapped IPv6 addresses are returned as sent.
    """

    version: int
    source: Address | None
    destination: Address | None
    length: int


def parse_proxy_header(buf: bytes | bytearray, mode: ProxyHeaderMode) -> ProxyHeader | None:
    """Parse the PROXY header at the start of `buf`.

    Returns the header once it is complete, or None while `buf` is a strict prefix of something
    that could still become a valid header. Raises ProxyHeaderError as soon as no continuation
    could make it valid. Any bytes at all give one of these three outcomes; nothing else is
    raised for any input. `mode` "any" accepts either version (the first byte tells them apart).
    """
    if mode == "v1":
        return _parse_v1(buf, expected="v1")
    if mode == "v2":
        return _parse_v2(buf, expected="v2")
    if mode == "any":
        # The two signatures already differ in their first byte ('P' against CR).
        if buf[:1] == V2_SIGNATURE[:1]:
            return _parse_v2(buf, expected="any")
        return _parse_v1(buf, expected="any")
    raise ValueError(f"unknown PROXY protocol mode {mode!r}")


def _not_a_header(buf: bytes | bytearray, expected: ProxyHeaderMode) -> ProxyHeaderError:
    """Explain a signature mismatch, naming the other version when that is what arrived.

    A wrong `proxy_protocol` setting on one side of the load balancer is the likeliest operator
    mistake, so the message says exactly that instead of a bare "bad header".
    """
    start = bytes(buf[:16])
    if expected == "v2" and start.startswith(V1_SIGNATURE):
        return ProxyHeaderError("got a PROXY protocol v1 header, but this listener requires v2")
    if expected == "v1" and start.startswith(V2_SIGNATURE):
        return ProxyHeaderError("got a PROXY protocol v2 header, but this listener requires v1")
    wanted = {"v1": "v1", "v2": "v2", "any": "v1 or v2"}[expected]
    return ProxyHeaderError(f"expected a PROXY protocol {wanted} header, got {start!r}")


# --- version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" --------------------------------

# One IPv4 octet, 0-255 in decimal without leading zeros (a leading zero would read as octal to
# some parsers). Every prefix of a valid octet is itself a valid octet, which makes the prefix
# pattern below exact: a partial field that does not match it can never become valid.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rb"%s(?:\.%s){3}" % (_OCTET, _OCTET))
_IPV4_PREFIX = re.compile(rb"(?:%s(?:\.%s){0,2}\.?|%s(?:\.%s){3})?" % ((_OCTET,) * 4))
# The characters inet_pton accepts for IPv6, including a dotted IPv4 tail. Checked before handing
# the text to `ipaddress`, which would also take a "%scope" suffix that has no place here.
_IPV6_CHARS = re.compile(rb"[0-9A-Fa-f:.]*")
_IPV6_MAX_TEXT = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")
# 0-65535 without leading zeros; as with octets, prefixes of valid ports are valid ports.
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_LINE_BREAK = re.compile(rb"[\r\n]")


def _parse_v1(buf: bytes | bytearray, expected: ProxyHeaderMode) -> ProxyHeader | None:
    window = bytes(buf[:MAX_V1])
    if not window.startswith(V1_SIGNATURE[: len(window)]):
        raise _not_a_header(buf, expected)
    end = _v1_line_end(window)
    if end is None:
        if window.endswith(b"\r"):  # only the LF may follow, so the fields are final already
            _check_v1_fields(window[len(V1_SIGNATURE) : -1], complete=True)
        else:
            _check_v1_fields(window[len(V1_SIGNATURE) :], complete=False)
        return None
    fields = _check_v1_fields(window[len(V1_SIGNATURE) : end], complete=True)
    if fields is None:  # UNKNOWN: the sender could not fill in the addresses.
        return ProxyHeader(version=1, source=None, destination=None, length=end + 2)
    source_ip, destination_ip, source_port, destination_port = fields
    return ProxyHeader(
        version=1,
        source=(source_ip, source_port),
        destination=(destination_ip, destination_port),
        length=end + 2,
    )


def _v1_line_end(window: bytes) -> int | None:
    """Index of the CR of the terminating CRLF, or None while it may still arrive.

    The specification forbids accepting a lone CR or LF as the end of the line; any CR or LF that
    is not part of the first CRLF makes the line invalid at once.
    """
    found = _LINE_BREAK.search(window)
    if found is None:
        if len(window) >= MAX_V1:
            raise ProxyHeaderError(f"PROXY protocol v1 line has no CRLF within {MAX_V1} bytes")
        return None
    at = found.start()
    if window[at] == ord("\n"):
        raise ProxyHeaderError("PROXY protocol v1 line ends with LF without CR")
    if at + 1 == len(window):  # a CR as the last byte so far: the LF may follow
        if len(window) >= MAX_V1:
            raise ProxyHeaderError(f"PROXY protocol v1 line has no CRLF within {MAX_V1} bytes")
        return None
    if window[at + 1] != ord("\n"):
        raise ProxyHeaderError("PROXY protocol v1 line contains a CR without LF")
    return at


_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")


def _check_v1_fields(
    rest: bytes, *, complete: bool
) -> tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address, int, int] | None:
    """Validate the text after "PROXY ": all of it when `complete`, else as far as it has come.

    The fields are separated by exactly one space, so splitting on single spaces turns any double
    space into an empty field, which every field check refuses. In an incomplete line the last
    field may still grow and is only checked as a prefix. Returns the addresses and ports of a
    complete TCP4/TCP6 line, and None for UNKNOWN or an incomplete line.
    """
    fields = rest.split(b" ")
    finished = fields if complete else fields[:-1]

    if not finished:  # still inside the protocol field
        if not any(name.startswith(fields[0]) for name in _V1_PROTOCOLS):
            raise _bad_v1_protocol(fields[0])
        return None
    protocol = finished[0]
    if protocol == b"UNKNOWN":
        # The sender may add anything (even nothing) before the CRLF; the receiver must ignore it.
        return None
    if protocol not in (b"TCP4", b"TCP6"):
        raise _bad_v1_protocol(protocol)

    is_v4 = protocol == b"TCP4"
    values = finished[1:]
    if b"" in values:
        raise ProxyHeaderError("PROXY protocol v1 line has an empty field (spaces must be single)")
    if len(values) > 4 or (not complete and len(values) == 4):
        raise ProxyHeaderError("PROXY protocol v1 line has more than four address fields")
    if complete:
        if len(values) < 4:
            raise ProxyHeaderError("PROXY protocol v1 line has fewer than four address fields")
        return (
            _v1_address(values[0], is_v4),
            _v1_address(values[1], is_v4),
            _v1_port(values[2]),
            _v1_port(values[3]),
        )
    for index, text in enumerate(values):
        if index < 2:
            _v1_address(text, is_v4)
        else:
            _v1_port(text)
    _check_v1_growing_field(fields[-1], index=len(values), is_v4=is_v4)
    return None


def _bad_v1_protocol(text: bytes) -> ProxyHeaderError:
    return ProxyHeaderError(f"PROXY protocol v1 protocol {text!r} is not TCP4, TCP6 or UNKNOWN")


def _v1_address(text: bytes, is_v4: bool) -> IPv4Address | IPv6Address:
    if is_v4:
        if _IPV4.fullmatch(text) is None:
            raise ProxyHeaderError(f"PROXY protocol v1 TCP4 address {text!r} is not valid")
        return IPv4Address(text.decode("ascii"))
    if not text or _IPV6_CHARS.fullmatch(text) is None:
        raise ProxyHeaderError(f"PROXY protocol v1 TCP6 address {text!r} is not valid")
    try:
        return IPv6Address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"PROXY protocol v1 TCP6 address {text!r} is not valid") from None


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY protocol v1 port {text!r} is not 0-65535 in decimal")
    return int(text)


def _check_v1_growing_field(text: bytes, *, index: int, is_v4: bool) -> None:
    """Refuse a partial field that no further bytes could turn into a valid one."""
    if index < 2:
        if is_v4:
            valid = _IPV4_PREFIX.fullmatch(text) is not None
        else:
            valid = len(text) <= _IPV6_MAX_TEXT and _IPV6_CHARS.fullmatch(text) is not None
        if not valid:
            family = "TCP4" if is_v4 else "TCP6"
            raise ProxyHeaderError(f"PROXY protocol v1 {family} address {text!r} is not valid")
    elif text and (_PORT.fullmatch(text) is None or int(text) > 65535):
        raise ProxyHeaderError(f"PROXY protocol v1 port {text!r} is not 0-65535 in decimal")


# --- version 2: 16 fixed bytes, then an address block and optional TLVs ---------------------------

_COMMAND_LOCAL = 0x0
_COMMAND_PROXY = 0x1
_TCP_OVER_IPV4 = 0x11
_TCP_OVER_IPV6 = 0x21
# Address block size for each family/transport byte the specification defines (UNSPEC, TCP and
# UDP over IPv4 and IPv6, UNIX stream and datagram). Any other value must be refused.
_ADDRESS_BLOCK_SIZES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


def _parse_v2(buf: bytes | bytearray, expected: ProxyHeaderMode) -> ProxyHeader | None:
    head = bytes(buf[:16])
    if not V2_SIGNATURE.startswith(head[:12]):
        raise _not_a_header(buf, expected)
    if len(head) < 13:
        return None
    version, command = head[12] >> 4, head[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol v2 header announces version {version}")
    if command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        raise ProxyHeaderError(f"PROXY protocol v2 header has unknown command {command:#x}")
    if len(head) < 14:
        return None
    family = head[13]
    # LOCAL (a load balancer's own health check) says to ignore the whole block, family included.
    if command == _COMMAND_PROXY and family not in _ADDRESS_BLOCK_SIZES:
        raise ProxyHeaderError(
            f"PROXY protocol v2 header has unknown family/protocol {family:#04x}"
        )
    if len(head) < 16:
        return None

    payload_length = int.from_bytes(head[14:16], "big")
    if payload_length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(
            f"PROXY protocol v2 header announces {payload_length} bytes after the fixed part,"
            f" more than the {MAX_V2_PAYLOAD} accepted"
        )
    total = 16 + payload_length
    if command == _COMMAND_LOCAL:
        return None if len(buf) < total else _no_address(total)

    address_size = _ADDRESS_BLOCK_SIZES[family]
    if payload_length < address_size:
        raise ProxyHeaderError(
            f"PROXY protocol v2 header is {payload_length} bytes after the fixed part, too short"
            f" for the {address_size}-byte address block of family/protocol {family:#04x}"
        )
    if family != 0x00:
        # With UNSPEC the specification says to ignore whatever follows, so only a family with a
        # known address size tells us where TLVs start.
        _check_tlvs(buf, start=16 + address_size, end=total)
    if len(buf) < total:
        return None

    if family == _TCP_OVER_IPV4:
        source_ip: IPv4Address | IPv6Address = IPv4Address(bytes(buf[16:20]))
        destination_ip: IPv4Address | IPv6Address = IPv4Address(bytes(buf[20:24]))
        ports = bytes(buf[24:28])
    elif family == _TCP_OVER_IPV6:
        source_ip = IPv6Address(bytes(buf[16:32]))
        destination_ip = IPv6Address(bytes(buf[32:48]))
        ports = bytes(buf[48:52])
    else:
        # UNSPEC, UNIX sockets and datagrams carry no TCP client address we could admit by, so
        # the connection counts as coming from the socket's peer (the load balancer itself).
        return _no_address(total)
    return ProxyHeader(
        version=2,
        source=(source_ip, int.from_bytes(ports[0:2], "big")),
        destination=(destination_ip, int.from_bytes(ports[2:4], "big")),
        length=total,
    )


def _no_address(total: int) -> ProxyHeader:
    return ProxyHeader(version=2, source=None, destination=None, length=total)


def _check_tlvs(buf: bytes | bytearray, *, start: int, end: int) -> None:
    """Check that the TLVs between `start` and `end` tile that space exactly.

    Their contents are not needed (nothing here relies on the TLVs a load balancer adds), but a
    TLV running past the declared length means the sender and we disagree about where the header
    ends, and then the HTTP request would start at the wrong byte. Works on a partial buffer too:
    each TLV's length is checked as soon as its 3-byte type/length prefix has arrived.
    """
    position = start
    while position < end:
        if end - position < 3:
            raise ProxyHeaderError("PROXY protocol v2 header ends inside a TLV's type and length")
        if len(buf) < position + 3:
            return
        tlv_type = buf[position]
        position += 3 + int.from_bytes(buf[position + 1 : position + 3], "big")
        if position > end:
            raise ProxyHeaderError(
                f"PROXY protocol v2 TLV of type {tlv_type:#04x} runs past the end of the header"
            )
