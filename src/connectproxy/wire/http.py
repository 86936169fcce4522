"""Sans-IO parsing of the one CONNECT request a client sends (the answers are responses.py).

Sans-IO because the server owns the socket, the handshake timeout and the byte limit; the parser
is then a pure function of bytes, so every hostile input can be pinned down in a test table and
explored by property tests without a network.

Strict because this proxy is an allowlist. Every leniency (a bare LF, a second
Proxy-Authorization, `127.1` as a host name) is a place where this parser and some other program
(a resolver, an upstream proxy, a log reader) could disagree about what was asked for, and such
disagreements are where bypasses live. We accept what RFC 9110/9112 call valid and a real sensor
sends, answer everything else with an error at once, and never raise anything but RequestError.

Error reasons are fixed strings: they never echo a target, a header or a credential, so nothing a
client sends can end up reflected in a response or smuggled into a log line through a reason.
"""

from __future__ import annotations

import base64
import binascii
import functools
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NoReturn

from connectproxy.outcome import Outcome, Refusal
from connectproxy.wire.hostnames import normalise_hostname
from connectproxy.wire.responses import TCHARS, VCHARS

_HEAD_END = b"\r\n\r\n"
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

# Byte classes, used with bytes.translate(None, delete=...): deleting every allowed byte leaves
# exactly the offending ones, a single C-level pass with no regex and no backtracking.
# Anywhere in a head: HTAB, CR, LF (their placement is checked separately), printable ASCII and
# obs-text. Everything else (NUL, the other C0 controls, DEL) can never be part of a valid head.
_HEAD_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

# In a target, these get a reason of their own because each is a known way to dress up a
# destination (URL forms, userinfo, escapes, zone ids); order matters: "://" before "/".
_TARGET_TRAPS = (
    ("://", "target must be host:port, not a URL"),
    ("@", "target must not contain userinfo ('@')"),
    ("/", "target must not contain a path"),
    ("?", "target must not contain a query"),
    ("#", "target must not contain a fragment"),
    ("%", "target must not contain percent-escapes or a zone id"),
    ("\\", "target must not contain a backslash"),
)
# `_` is let through here so the host name check can name the problem precisely.
_TARGET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:[]")


class RequestError(Refusal):
    """A request we answer with an HTTP error and close; the outcome follows from the status."""

    status: int

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, _outcome_for(status), reason)
        self.args = (status, reason)
        self.status = status


def _outcome_for(status: int) -> Outcome:
    """The metrics outcome (docs/operations.md, "Metrics") of each status this module produces."""
    match status:
        case 400 | 431:
            return "bad_request"
        case 405:
            return "method_not_allowed"
        case 408:
            return "handshake_timeout"
    raise ValueError(f"RequestError does not cover HTTP status {status}")


# Target and Request are compared, hashed and shown as the frozen dataclasses they were, and as
# immutable (mypy refuses an assignment, and compiled it raises); written out because `explain`
# does not import dataclasses (config/frozen.py).


class Target:
    """Where the client asked to go, in the one spelling the policy and the resolver both see."""

    __slots__ = ("host", "ip", "port")

    def __init__(self, host: str, port: int, ip: IPv4Address | IPv6Address | None) -> None:
        self.host: Final = host
        self.port: Final = port
        self.ip: Final = ip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return (self.host, self.port, self.ip) == (other.host, other.port, other.ip)

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.ip))

    def __repr__(self) -> str:
        return f"Target(host={self.host!r}, port={self.port!r}, ip={self.ip!r})"

    @property
    def authority(self) -> str:
        if isinstance(self.ip, IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class Request:
    __slots__ = ("headers", "method", "proxy_authorization", "target", "version")

    def __init__(
        self,
        method: str,
        target: Target,
        version: str,
        headers: tuple[tuple[str, str], ...],
        proxy_authorization: str | None,
    ) -> None:
        self.method: Final = method
        self.target: Final = target
        self.version: Final = version
        self.headers: Final = headers
        self.proxy_authorization: Final = proxy_authorization

    def _fields(self) -> tuple[object, ...]:
        return (self.method, self.target, self.version, self.headers, self.proxy_authorization)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, version={self.version!r}, "
            f"headers={self.headers!r}, proxy_authorization={self.proxy_authorization!r})"
        )


def find_head_end(buf: bytes | bytearray, max_bytes: int) -> int:
    """Index just past the blank line ending the head, or -1 if more bytes are needed.

    Raises RequestError(431) once `max_bytes` is reached without an end, and RequestError(400)
    as soon as the bytes so far can never start a valid head, so a client speaking something
    else (TLS, garbage, bare-LF HTTP) is answered at once instead of at the handshake timeout.
    Only the head is looked at: bytes after it belong to the tunnel.

    Called again after every read with the whole buffer; each call is a few C-level passes over
    at most `max_bytes`, so feeding byte by byte stays cheap. Header lines themselves are checked
    by parse_head once the head is complete.
    """
    end = buf.find(_HEAD_END, 0, max_bytes)
    complete = end >= 0
    data = bytes(buf[: end + len(_HEAD_END)] if complete else buf[:max_bytes])
    _check_head_bytes(data, complete=complete)
    # Every CR is known to start a CRLF (or to await its LF), so the first one ends the line.
    first_end = data.find(b"\r")
    if first_end >= 0:
        _check_request_line(data[:first_end], complete=True)
    else:
        _check_request_line(data, complete=False)
    if complete:
        return end + len(_HEAD_END)
    if len(buf) >= max_bytes:
        raise RequestError(431, "request head is larger than the configured limit")
    return -1


def take_request(buf: bytes, max_bytes: int) -> tuple[Request, bytes] | None:
    """The request at the start of `buf` and the bytes after its head (early tunnel data), or
    None while more bytes are needed; RequestError exactly as find_head_end then parse_head.

    A complete head goes straight to parse_head, which makes every check find_head_end would,
    in the same order: the incremental checks only matter while the head is incomplete. That
    spares the usual request, which arrives in one read, a second pass over its bytes."""
    end = buf.find(_HEAD_END, 0, max_bytes)
    if end < 0:
        find_head_end(buf, max_bytes)  # refuses garbage or an over-long head at once
        return None
    end += len(_HEAD_END)
    head = buf[:end]
    if len(head) <= _REMEMBERED_HEAD_MAX and head.lower().find(b"proxy-authorization") < 0:
        return _parse_remembered_head(head), buf[end:]
    return parse_head(head), buf[end:]


def parse_head(head: bytes) -> Request:
    """Parse a complete head (request line, header lines, blank line) in the order of the
    request steps (docs/configuration.md, "How the keys combine: one request, step by step").

    Syntax (400) covers the whole head before the method (405) and the target (400; see
    400), so a client always learns about the first thing wrong in that order. Total: any bytes
    give a Request or a RequestError.
    """
    if not head.endswith(_HEAD_END) or head.find(_HEAD_END) != len(head) - len(_HEAD_END):
        raise RequestError(400, "request head must end with exactly one blank line")
    _check_head_bytes(head, complete=True)
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    method, target, version = _check_request_line(lines[0], complete=True)
    headers = tuple(_parse_header_line(line) for line in lines[1:])

    credentials = [value for name, value in headers if name == "proxy-authorization"]
    if len(credentials) > 1:
        raise RequestError(400, "more than one Proxy-Authorization header")

    if method != b"CONNECT":
        raise RequestError(405, "only CONNECT is supported")
    _check_no_body(headers)

    return Request(
        method="CONNECT",
        target=parse_target(target.decode("ascii")),
        version=version.decode("ascii"),
        headers=headers,
        proxy_authorization=credentials[0] if credentials else None,
    )


# A fleet of sensors sends the same few heads byte for byte, connection after connection, and a
# Request is immutable: a repeated head costs a dictionary lookup instead of the parse (0.5 against
# 2.5 us, an eighth of a tunnel's user-space instructions). Like parse_target, errors are never
# stored, so a hostile head is checked every time. Heads carrying credentials are never stored
# either (take_request): the authenticator keeps no password in memory (auth.py), and this cache
# must not keep one for it. Short heads only, so the cache's memory stays small.
_REMEMBERED_HEADS = 256
_REMEMBERED_HEAD_MAX = 512  # bytes: at most 256 x 512 bytes of heads are kept
_parse_remembered_head = functools.lru_cache(maxsize=_REMEMBERED_HEADS)(parse_head)


def _check_head_bytes(data: bytes, *, complete: bool) -> None:
    """Byte-level rules that hold anywhere in a head, checked without splitting it."""
    if data.translate(None, _HEAD_BYTES):
        raise RequestError(400, "request head contains a control byte")
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        raise RequestError(400, "request head has a line ending in a bare LF; CRLF is required")
    cr = data.count(b"\r")
    if not complete and data.endswith(b"\r"):
        cr -= 1  # its LF may be in the next read
    if cr != crlf:
        raise RequestError(400, "request head contains a bare CR")
    # find, not `in`: for bytes, `in` first tries the operand as an integer and builds a
    # TypeError message before searching, which cost more than the search.
    if data.find(b"\r\n ") >= 0 or data.find(b"\r\n\t") >= 0:
        raise RequestError(400, "obsolete line folding is not accepted")


def _check_request_line(line: bytes, *, complete: bool) -> tuple[bytes, bytes, bytes]:
    """Check `METHOD SP target SP HTTP/1.x`, or when not `complete`, that the line could become one.

    Returns the three parts (meaningful only when complete).
    """
    parts = line.split(b" ", 3)
    if len(parts) > 3 or (complete and len(parts) < 3):
        raise RequestError(400, "request line is not 'METHOD target HTTP/1.x'")
    method = parts[0]
    if (complete or len(parts) > 1) and not method:
        raise RequestError(400, "request line is not 'METHOD target HTTP/1.x'")
    if method.translate(None, TCHARS):
        raise RequestError(400, "request method is not a token")
    if len(parts) == 1:
        return method, b"", b""
    target = parts[1]
    if (complete or len(parts) > 2) and not target:
        raise RequestError(400, "request line is not 'METHOD target HTTP/1.x'")
    if target.translate(None, VCHARS):
        raise RequestError(400, "request target contains a non-ASCII or control byte")
    if len(parts) == 2:
        return method, target, b""
    version = parts[2]
    if complete:
        if version not in _VERSIONS:
            raise RequestError(400, "only HTTP/1.0 and HTTP/1.1 are supported")
    elif not any(known.startswith(version) for known in _VERSIONS):
        raise RequestError(400, "only HTTP/1.0 and HTTP/1.1 are supported")
    return method, target, version


def _parse_header_line(line: bytes) -> tuple[str, str]:
    """`name: value` with a token name and no space before the colon (RFC 9112 section 5)."""
    name, colon, value = line.partition(b":")
    if not colon:
        raise RequestError(400, "header line without a colon")
    if not name:
        raise RequestError(400, "header line with an empty name")
    if name.translate(None, TCHARS):
        if name.endswith((b" ", b"\t")):
            raise RequestError(400, "whitespace between a header name and its colon")
        raise RequestError(400, "header name is not a token")
    # Control bytes, CR and LF are already excluded; what remains is HTAB, SP, VCHAR and obs-text,
    # which latin-1 maps one to one so no byte is ever lost or rejected by decoding.
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _check_no_body(headers: tuple[tuple[str, str], ...]) -> None:
    """A CONNECT has no body; framing headers on it only matter to a smuggling attempt.

    Whatever follows the head is tunnel data. A Transfer-Encoding or non-zero Content-Length
    means the client (or something in between) thinks otherwise, and an upstream proxy in a chain
    might agree with it, so the request is refused rather than guessed at.
    """
    for name, value in headers:
        if name == "transfer-encoding":
            raise RequestError(400, "Transfer-Encoding is not allowed on CONNECT")
        if name == "content-length" and not (
            value.isascii() and value.isdigit() and int(value) == 0
        ):
            raise RequestError(400, "a CONNECT request must not have a body")


@functools.lru_cache(maxsize=1024)
def parse_target(authority: str) -> Target:
    """`host:port` or `[ipv6]:port` (request step 3); anything else is RequestError(400).

    Cached: sensors ask for the same few endpoints over and over, and a Target is immutable, so
    a repeated authority costs a dictionary lookup instead of the checks below. Errors are not
    cached (lru_cache never stores an exception), so hostile targets are checked every time.
    """
    if not authority:
        raise RequestError(400, "request target is empty")
    if not _TARGET_CHARS.issuperset(authority):
        _reject_characters(authority)

    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise RequestError(400, "target has an unterminated '['")
        literal, rest = authority[1:close], authority[close + 1 :]
        if not rest.startswith(":"):
            raise RequestError(400, "target has no port after the IPv6 address")
        port = _parse_port(rest[1:])
        ipv6 = _parse_ipv6(literal)
        return Target(host=str(ipv6), port=port, ip=ipv6)

    if "[" in authority or "]" in authority:
        raise RequestError(400, "brackets in a target may only enclose a leading IPv6 address")
    host, colon, port_text = authority.partition(":")
    if not colon:
        raise RequestError(400, "target has no port")
    if ":" in port_text:
        raise RequestError(400, "an IPv6 address in a target must be in brackets")
    port = _parse_port(port_text)
    if not host:
        raise RequestError(400, "target has no host")
    if not host.strip("0123456789."):
        ipv4 = _parse_ipv4(host)
        return Target(host=str(ipv4), port=port, ip=ipv4)
    try:
        name = normalise_hostname(host)
    except ValueError as exc:
        raise RequestError(400, f"invalid target: {exc}") from None
    return Target(host=name, port=port, ip=None)


def _reject_characters(authority: str) -> NoReturn:
    """Name the first problem of a target with characters outside host:port. Only reached on
    failure, so the common case pays for one set test instead of these scans."""
    for trap, reason in _TARGET_TRAPS:
        if trap in authority:
            raise RequestError(400, reason)
    if any(char.isspace() for char in authority):
        raise RequestError(400, "target must not contain whitespace")
    raise RequestError(400, "target contains a character not allowed in host:port")


def _parse_port(text: str) -> int:
    if not text:
        raise RequestError(400, "target has an empty port")
    if not (text.isascii() and text.isdigit()):
        raise RequestError(400, "port must be decimal digits")
    if text.startswith("0"):
        raise RequestError(400, "port must be 1-65535 without leading zeros")
    if len(text) > 5 or int(text) > 65535:
        raise RequestError(400, "port must be 1-65535 without leading zeros")
    return int(text)


def _parse_ipv4(host: str) -> IPv4Address:
    """Exactly four decimal octets without leading zeros.

    Resolvers read `010` as octal and `127.1` as 127.0.0.1; only the one unambiguous spelling
    is accepted so the policy and the resolver cannot disagree about the address.
    """
    octets = host.split(".")
    if len(octets) != 4:
        raise RequestError(400, "IPv4 address must be four decimal octets")
    for octet in octets:
        if not octet or len(octet) > 3 or (octet.startswith("0") and octet != "0"):
            raise RequestError(400, "IPv4 address must be four decimal octets 0-255, no padding")
        if int(octet) > 255:
            raise RequestError(400, "IPv4 address must be four decimal octets 0-255, no padding")
    return IPv4Address(host)


def _parse_ipv6(literal: str) -> IPv6Address:
    """The bracketed literal; `%` (zone ids) never reaches here, it is refused as a trap."""
    try:
        return IPv6Address(literal)
    except ValueError:
        if ":" not in literal:
            raise RequestError(400, "brackets may only enclose an IPv6 address") from None
        raise RequestError(400, "target has an invalid IPv6 address") from None


def parse_basic_credentials(value: str) -> tuple[str, str] | None:
    """A Proxy-Authorization value as (user, password), or None when it is not usable Basic.

    None covers another scheme, bad base64, non-UTF-8, no colon, an empty user name and control
    characters (RFC 7617 forbids them, and the user name ends up in logs). Never raises: the
    value is whatever the client sent.
    """
    scheme, _, token = value.strip(" \t").partition(" ")
    if not scheme.isascii() or scheme.lower() != "basic":
        return None
    token = token.lstrip(" ")
    if not token or not token.isascii():
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return None
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in decoded):
        return None
    return user, password
