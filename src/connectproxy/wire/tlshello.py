"""A sans-IO reader of the TLS ClientHello a client sends into a tunnel, and its JA4 fingerprint.

The TLS guard (SPEC 5.1) peeks at the first bytes a client sends after the 200: it must know
whether they are a TLS handshake at all, which name the client asks the server for (SNI), which
versions and application protocols it offers, and the JA4 fingerprint for the access log. It never
decrypts and never changes a byte; it only reads the plaintext first flight.

Sans-IO because the flow owns the socket, the 64 KiB limit and the deadline. The caller keeps
everything received so far in one buffer and calls `parse_client_hello` after each read; the
answer is a `ClientHello` (the hello is complete), `NeedMore` (a valid prefix: read on), or
`ClientHelloError` (no continuation can make these bytes a ClientHello). A hello may arrive in any
number of TCP segments and, since post-quantum key shares made hellos of 1.5 KB and more, in
several TLS records: the handshake message is reassembled from the fragments of consecutive
handshake records, as RFC 8446 section 5.1 allows.

Strict, because the guard is a security check: a hello that a TLS server would reject as malformed
(a length that does not add up, a duplicate extension, two host names) is refused instead of being
read one way here and another way by the server. Duplicates matter most: with two server_name
extensions the guard and the server could each believe a different one. Error reasons are fixed
strings; nothing the client sent is echoed into them.

References: RFC 8446 (TLS 1.3) sections 4.1.2 and 5.1, RFC 5246 (TLS 1.2) appendix E.2 for the
SSLv2-compatible hello, RFC 6066 section 3 (server_name), RFC 7301 (ALPN), RFC 8701 (GREASE),
draft-ietf-tls-esni (encrypted_client_hello), and FoxIO's JA4 specification
(technical_details/JA4.md in github.com/FoxIO-LLC/ja4).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ClientHello",
    "ClientHelloError",
    "NeedMore",
    "is_grease",
    "ja4",
    "parse_client_hello",
    "version_name",
]

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_RECORD_HEADER: Final = 5
# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes.
_MAX_FRAGMENT: Final = 1 << 14
# The longest ClientHello body the fields allow (RFC 8446 4.1.2): version, random, a 32-byte
# session id, 2^16-2 bytes of cipher suites, 255 compression methods, 2^16-1 of extensions. A
# larger announced length cannot be a hello, so it is refused at once instead of waited for.
_MAX_BODY: Final = 2 + 32 + (1 + 32) + (2 + 0xFFFE) + (1 + 0xFF) + (2 + 0xFFFF)

EXT_SERVER_NAME: Final = 0x0000
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B
EXT_ENCRYPTED_CLIENT_HELLO: Final = 0xFE0D

_VERSION_NAMES: Final = {
    0x0300: "SSL 3.0",
    0x0301: "1.0",
    0x0302: "1.1",
    0x0303: "1.2",
    0x0304: "1.3",
}
# JA4's two-character version codes (JA4.md, "TLS and DTLS Version"); anything else is "00".
_JA4_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_PRINTABLE: Final = bytes(range(0x21, 0x7F))
_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_ALNUM: Final = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class ClientHelloError(Exception):
    """These bytes are not, and can never become, a TLS ClientHello.

    Every such case is the guard's cause `not TLS` (`cause`); `reason` is a fixed string saying
    what was wrong, for the log and for tests. A hello that is merely unfinished is `NeedMore`,
    never this error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = "not TLS"

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are a valid start of a ClientHello; read on.

    `needed` is a lower bound on the total length the buffer must reach before it can hold the
    whole hello (the records still to come may add headers), so the guard can refuse a hello that
    announces more than it is willing to buffer (`incomplete ClientHello`) without waiting. A
    byte that makes the hello invalid is refused as soon as it arrives, whatever `needed` says.
    """

    needed: int


# `init=False` and an __init__ of our own: compiled (setup.py), a dataclass's generated __init__
# stays interpreted, and a frozen one sets each field through object.__setattr__; that was a
# quarter of reading a hello, once per guarded tunnel. Not frozen for the same reason; nothing
# changes a hello after it is made, and the dataclass still gives equality, repr and `replace`.
@dataclass(slots=True, init=False)
class ClientHello:
    """What a complete ClientHello offers, with every list in the order the client sent it.

    GREASE values (RFC 8701) are kept where they were sent; `is_grease` tells them apart, and
    `ja4` drops them as the fingerprint requires. `server_name` is the host_name of the
    server_name extension, exactly as sent (the guard normalises it before comparing), or None
    without one. With Encrypted Client Hello it is the outer, public name: the real one is
    encrypted. `ech` says an encrypted_client_hello extension is there; Chrome also sends one
    filled with random bytes (GREASE) when it has no ECH key, and the two look the same.
    `version` is the highest version offered, from supported_versions when present (GREASE
    ignored), else the hello's legacy version; 0 when supported_versions holds nothing but
    GREASE. `length` is how many bytes of the buffer the records holding the hello take; the
    guard forwards the whole buffer regardless.
    """

    legacy_version: int
    version: int
    server_name: str | None
    alpn: tuple[bytes, ...]
    cipher_bytes: bytes
    extension_bytes: bytes
    signature_bytes: bytes
    supported_versions: tuple[int, ...]
    ech: bool
    length: int

    def __init__(
        self,
        legacy_version: int,
        version: int,
        server_name: str | None,
        alpn: tuple[bytes, ...],
        cipher_bytes: bytes,
        extension_bytes: bytes,
        signature_bytes: bytes,
        supported_versions: tuple[int, ...],
        ech: bool,
        length: int,
    ) -> None:
        self.legacy_version = legacy_version
        self.version = version
        self.server_name = server_name
        self.alpn = alpn
        self.cipher_bytes = cipher_bytes
        self.extension_bytes = extension_bytes
        self.signature_bytes = signature_bytes
        self.supported_versions = supported_versions
        self.ech = ech
        self.length = length

    # The three lists JA4 hashes are kept as the hello spells them, two big-endian bytes a
    # value: the guard's JA4 cache looks them up as they are (tlsguard._ja4_of), and turning
    # them into tuples of ints for every hello was a third of reading one (bench/run.py
    # --scenario instructions, connectproxy-tls: 12,800 instructions a tunnel of 38,000).
    @property
    def cipher_suites(self) -> tuple[int, ...]:
        return _u16_values(self.cipher_bytes)

    @property
    def extensions(self) -> tuple[int, ...]:
        """The extension types in the order sent."""
        return _u16_values(self.extension_bytes)

    @property
    def signature_algorithms(self) -> tuple[int, ...]:
        return _u16_values(self.signature_bytes)

    @property
    def version_text(self) -> str | None:
        """The version for the access log's `tls_version`, e.g. "1.3"; None if unknown."""
        return version_name(self.version)


def is_grease(value: int) -> bool:
    """RFC 8701's reserved values: 0x0A0A, 0x1A1A, ... 0xFAFA (both bytes equal, low nibble A)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def version_name(version: int) -> str | None:
    """The version as people write it ("1.0" to "1.3", "SSL 3.0"); None if TLS defines none."""
    return _VERSION_NAMES.get(version)


def parse_client_hello(data: bytes | bytearray) -> ClientHello | NeedMore:
    """Read the ClientHello at the start of `data`, everything the client has sent so far.

    Returns the hello once its last byte has arrived, `NeedMore` while `data` is a valid prefix,
    and raises `ClientHelloError` as soon as no continuation could make it a ClientHello. Nothing
    else is raised for any input.
    """
    buf = bytes(data)
    if len(buf) >= 3 and buf[0] & 0x80 and buf[2] == _CLIENT_HELLO:
        # RFC 5246 E.2: a two-byte length with the high bit set, then message type 1. Old clients
        # sent it to reach SSL 2.0 servers; it carries no extensions, so no SNI, and no current
        # client sends it. Named apart so a log shows why an old client is refused.
        raise ClientHelloError("SSLv2-compatible hello")
    if len(buf) >= 9 and buf[0] == _HANDSHAKE and buf[1] == 3 and 1 <= buf[2] <= 4:
        # What nearly every client sends: the whole hello in one record, nothing after it. Read
        # in place; the loop below would reach the same answer, reassembling a copy of it.
        declared = (buf[3] << 8) | buf[4]
        if (
            declared <= _MAX_FRAGMENT
            and len(buf) >= _RECORD_HEADER + declared
            and buf[5] == _CLIENT_HELLO
            and (buf[6] << 16 | buf[7] << 8 | buf[8]) + 4 == declared
        ):
            return _parse_body(buf[9 : _RECORD_HEADER + declared], _RECORD_HEADER + declared)
    message = bytearray()
    pos = 0
    total = -1  # the handshake message's length with its header, once that header is known
    while True:
        header = buf[pos : pos + _RECORD_HEADER]
        declared = _check_record_header(header)
        if len(header) < _RECORD_HEADER:
            # At least the rest of this header and one more byte of the message.
            missing = total - len(message) if total >= 0 else 4 - len(message)
            return NeedMore(pos + _RECORD_HEADER + max(missing, 1))
        start = pos + _RECORD_HEADER
        end = start + declared
        received = len(message) + declared  # once this record is whole
        message += buf[start:end]
        total = _check_message_start(message, total)
        if total >= 0 and received > total:
            # Nothing may follow the ClientHello in its record: the client waits for the
            # server's answer (TLS 1.2) or changes keys (TLS 1.3 early data) after it.
            raise ClientHelloError("ClientHello does not end its record")
        if end > len(buf):
            missing = total - received if total >= 0 else 4 - received
            return NeedMore(end + (_RECORD_HEADER + missing if missing > 0 else 0))
        pos = end
        if received == total:
            return _parse_body(bytes(message[4:]), pos)


def _check_message_start(message: bytearray, total: int) -> int:
    """Check that the handshake message is a ClientHello; return its length once known."""
    if total >= 0:
        return total
    if message[:1] and message[0] != _CLIENT_HELLO:
        raise ClientHelloError("handshake message is not a ClientHello")
    if len(message) < 4:
        return -1
    length = int.from_bytes(message[1:4], "big")
    if length > _MAX_BODY:
        raise ClientHelloError("ClientHello longer than its fields allow")
    return 4 + length


def _check_record_header(header: bytes) -> int:
    """Check what is there of a handshake record header; return the fragment length if whole."""
    if header[:1] and header[0] != _HANDSHAKE:
        raise ClientHelloError("not a TLS handshake record")
    if len(header) >= 2 and header[1] != 3:
        raise ClientHelloError("record version is not TLS 1.0-1.3")
    if len(header) >= 3 and not 1 <= header[2] <= 4:
        raise ClientHelloError("record version is not TLS 1.0-1.3")
    if len(header) < _RECORD_HEADER:
        return 0
    length = int.from_bytes(header[3:5], "big")
    if length == 0:
        raise ClientHelloError("empty handshake record")
    if length > _MAX_FRAGMENT:
        raise ClientHelloError("record longer than 2^14 bytes")
    return length


class _Reader:
    """Reads big-endian integers and length-prefixed vectors from one span of the message.

    Every read checks the span's end, so a length field that points past its parent is refused
    with the name of the field (`what`) instead of silently reading the neighbour's bytes.
    """

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.what = what

    def _advance(self, count: int) -> int:
        start = self.pos
        if count > self.end - start:
            raise ClientHelloError(f"malformed ClientHello: {self.what}")
        self.pos = start + count
        return start

    def u8(self) -> int:
        return self.data[self._advance(1)]

    def u16(self) -> int:
        start = self._advance(2)
        return (self.data[start] << 8) | self.data[start + 1]

    def skip(self, count: int) -> None:
        self._advance(count)

    def vector(self, length_bytes: int, what: str, minimum: int = 0) -> _Reader:
        """The vector at the cursor, whose length takes `length_bytes` (1 or 2) bytes."""
        length = self.u8() if length_bytes == 1 else self.u16()
        if length < minimum:
            raise ClientHelloError(f"malformed ClientHello: {what}")
        start = self._advance(length)
        return _Reader(self.data, start, start + length, what)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def finish(self) -> None:
        if self.pos != self.end:
            raise ClientHelloError(f"malformed ClientHello: {self.what}")

    def u16_bytes(self) -> bytes:
        """The rest of the span, a list of 16-bit values; an odd length is malformed."""
        if (self.end - self.pos) % 2:
            raise ClientHelloError(f"malformed ClientHello: {self.what}")
        start, self.pos = self.pos, self.end
        return self.data[start : self.end]


def _u16_values(raw: bytes) -> tuple[int, ...]:
    """Big-endian 16-bit values, read by `array` in C rather than one by one."""
    packed = array("H", raw)
    if _LITTLE_ENDIAN:
        packed.byteswap()
    return tuple(packed)


def _parse_body(body: bytes, length: int) -> ClientHello:
    """The ClientHello structure of RFC 8446 4.1.2 (and RFC 5246 7.4.1.2, the same bytes)."""
    hello = _Reader(body, 0, len(body), "ClientHello")
    legacy_version = hello.u16()
    if legacy_version >> 8 != 3:
        raise ClientHelloError("ClientHello version is not SSL 3.0 or TLS")
    hello.skip(32)  # random
    session_id = hello.vector(1, "session id")
    if session_id.end - session_id.pos > 32:
        raise ClientHelloError("malformed ClientHello: session id")
    ciphers = hello.vector(2, "cipher suites", minimum=2).u16_bytes()
    hello.vector(1, "compression methods", minimum=1)
    kinds = bytearray()  # the extension types as sent, two bytes each
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    signature_algorithms = b""
    supported_versions: tuple[int, ...] = ()
    ech = False
    # A hello may end after the compression methods: TLS 1.0-era clients send no extensions.
    if not hello.at_end():
        block = hello.vector(2, "extensions")
        hello.finish()
        seen: set[int] = set()
        # Each extension is read in place: a reader object is made only for the four whose
        # contents matter, not for the dozen or so others a hello carries.
        pos, end = block.pos, block.end
        while pos < end:
            if end - pos < 4:
                raise ClientHelloError("malformed ClientHello: extensions")
            kind = (body[pos] << 8) | body[pos + 1]
            start = pos + 4
            pos = start + ((body[pos + 2] << 8) | body[pos + 3])
            if pos > end:
                raise ClientHelloError("malformed ClientHello: extensions")
            if kind in seen:
                # RFC 8446 4.2: at most one extension of each type; a server aborts otherwise.
                raise ClientHelloError("duplicate extension")
            seen.add(kind)
            kinds += body[start - 4 : start - 2]
            if kind == EXT_SERVER_NAME:
                server_name = _server_name(_Reader(body, start, pos, "server_name"))
            elif kind == EXT_ALPN:
                alpn = _alpn(_Reader(body, start, pos, "ALPN"))
            elif kind == EXT_SIGNATURE_ALGORITHMS:
                data = _Reader(body, start, pos, "signature_algorithms")
                signature_algorithms = data.vector(2, "signature_algorithms", 2).u16_bytes()
                data.finish()
            elif kind == EXT_SUPPORTED_VERSIONS:
                data = _Reader(body, start, pos, "supported_versions")
                raw = data.vector(1, "supported_versions", 2).u16_bytes()
                data.finish()
                # Two to four values: a loop here costs less than an array made for them.
                supported_versions = tuple(
                    [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]
                )
            elif kind == EXT_ENCRYPTED_CLIENT_HELLO:
                ech = True
    else:
        hello.finish()
    version = legacy_version
    if supported_versions:
        offered = [v for v in supported_versions if not is_grease(v)]
        version = max(offered) if offered else 0
    return ClientHello(
        legacy_version=legacy_version,
        version=version,
        server_name=server_name,
        alpn=alpn,
        cipher_bytes=ciphers,
        extension_bytes=bytes(kinds),
        signature_bytes=signature_algorithms,
        supported_versions=supported_versions,
        ech=ech,
        length=length,
    )


def _server_name(data: _Reader) -> str:
    """RFC 6066 3: a list of (type, name); exactly one host_name (type 0), in ASCII."""
    data.what = "server_name"
    names = data.vector(2, "server_name", minimum=1)
    data.finish()
    host: str | None = None
    while not names.at_end():
        name_type = names.u8()
        name = names.vector(2, "server_name", minimum=1)
        if name_type != 0:
            continue  # no other type is defined; its bytes are skipped as the RFC lays them out
        if host is not None:
            raise ClientHelloError("more than one server_name host name")
        raw = name.data[name.pos : name.end]
        # A DNS name in ASCII (RFC 6066 3). Control bytes and spaces are refused too: no client
        # sends them, OpenSSL aborts on a NUL, and the name ends up in the access log.
        if raw.translate(None, _PRINTABLE):
            raise ClientHelloError("server_name is not printable ASCII")
        host = raw.decode("ascii")
    if host is None:
        raise ClientHelloError("server_name without a host name")
    return host


def _alpn(data: _Reader) -> tuple[bytes, ...]:
    """RFC 7301 3.1: a non-empty list of non-empty protocol names, kept as bytes."""
    data.what = "ALPN"
    names = data.vector(2, "ALPN", minimum=2)
    data.finish()
    protocols: list[bytes] = []
    while not names.at_end():
        name = names.vector(1, "ALPN", minimum=1)
        protocols.append(name.data[name.pos : name.end])
    return tuple(protocols)


# --- JA4 ------------------------------------------------------------------------------------------


def ja4(hello: ClientHello) -> str:
    """FoxIO's JA4 TLS client fingerprint, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`.

    As technical_details/JA4.md defines it: `t` (TLS over TCP: the only kind a tunnel carries),
    the version code, `d` with a server_name extension or `i` without, the counts of cipher suites
    and of extensions (GREASE left out, at most 99), the first and last character of the first
    ALPN value; then the truncated SHA-256 of the sorted cipher suites, and of the sorted
    extensions without server_name and ALPN followed by the signature algorithms in the order sent.
    """
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    extensions = [e for e in hello.extensions if not is_grease(e)]
    signatures = [s for s in hello.signature_algorithms if not is_grease(s)]
    head = "t{}{}{:02d}{:02d}{}".format(
        _JA4_VERSIONS.get(hello.version, "00"),
        "d" if EXT_SERVER_NAME in extensions else "i",
        min(len(ciphers), 99),
        min(len(extensions), 99),
        _ja4_alpn(hello.alpn),
    )
    ciphers.sort()
    cipher_hash = _ja4_hash(_hex_list(ciphers))
    hashed = [e for e in extensions if e != EXT_SERVER_NAME and e != EXT_ALPN]
    hashed.sort()
    text = _hex_list(hashed)
    if text and signatures:
        text += "_" + _hex_list(signatures)
    return f"{head}_{cipher_hash}_{_ja4_hash(text)}"


def _ja4_alpn(alpn: tuple[bytes, ...]) -> str:
    """The first and last character of the first ALPN value ("00" without one).

    When either end is not an ASCII letter or digit, the first and last characters of the whole
    value's hex spelling are used instead (JA4.md, "ALPN Extension Value").
    """
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    if first[0] in _ALNUM and first[-1] in _ALNUM:
        return chr(first[0]) + chr(first[-1])
    spelled = first.hex()
    return spelled[0] + spelled[-1]


def _hex_list(values: list[int]) -> str:
    """`0403,0804`: four lower-case hex digits each, comma-separated.

    Spelt by `bytes.hex` with a separator every two bytes, in one C call: formatting each value
    with a format spec took half of the guard's time per tunnel, compiled (bench/run.py,
    connectproxy-tls). Every value is 16 bits wide, so two big-endian bytes each."""
    packed = array("H", values)
    if _LITTLE_ENDIAN:
        packed.byteswap()
    return packed.tobytes().hex(",", 2)


def _ja4_hash(text: str) -> str:
    """The first 12 hex digits of SHA-256, or twelve zeros for an empty list."""
    if not text:
        return "000000000000"
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]
