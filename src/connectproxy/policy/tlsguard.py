"""The TLS guard's check (SPEC 5.1): do the first bytes of a tunnel carry TLS to the host it named?

An allowlist of names is only as strong as the check that the tunnel goes to that name: a client
allowed to CONNECT to one host of a shared front end can otherwise send a ClientHello for any
other host behind it (domain fronting), or any protocol at all. The guard reads the plaintext
ClientHello the client sends after the 200, compares its server_name with the CONNECT host, and
decides, without decrypting or changing a byte.

A pure function of the policy's `tls` mode, the CONNECT target and the bytes received so far, so
the decision table is unit-tested without sockets; the flow (server/connection.py) owns the
socket, the 64 KiB limit's reads and the deadline, and asks `judge` after each read. Parsing is
wire/tlshello.py's; this module only says what its answer means for the tunnel.

Error texts are the SPEC's. The one that names the server_name carries what the client sent: the
parser admits only printable ASCII there (no spaces, no control bytes), the access log escapes
it, and it is cut to a host name's length so a 64 KiB name cannot fill the log.
"""

from __future__ import annotations

from typing import Final, Literal

from connectproxy.config.model import TLSMode
from connectproxy.wire.tlshello import ClientHello, ClientHelloError, NeedMore, ja4
from connectproxy.wire.tlshello import parse_client_hello as _parse

__all__ = [
    "HELLO_LIMIT",
    "REASONS",
    "Ended",
    "HelloSeen",
    "TLSReason",
    "Verdict",
    "judge",
]

# The most the guard reads before it decides (SPEC 5.1). A ClientHello that has not completed by
# then is `incomplete`; real ones, post-quantum key shares included, stay under 8 KiB.
HELLO_LIMIT: Final = 65536

TLSReason = Literal["not_tls", "incomplete", "no_sni", "sni_mismatch", "timeout"]
REASONS: tuple[TLSReason, ...] = ("not_tls", "incomplete", "no_sni", "sni_mismatch", "timeout")
# Why the bytes stopped coming before a decision: the client half-closed or closed ("eof"), or
# `timeouts.handshake` passed since the 200 ("timeout"). None: they may still come.
Ended = Literal["eof", "timeout"] | None

_MAX_SHOWN: Final = 253  # a DNS name's longest spelling: longer server_names are cut in messages


class HelloSeen:
    """What the access log shows of a ClientHello (`sni`, `tls_version`, `alpn`, `ja4`); each
    None where the hello did not say or there was no hello.

    A plain class: compiled (setup.py), a dataclass's generated __init__ would run interpreted.
    """

    __slots__ = ("alpn", "ja4", "sni", "tls_version")

    def __init__(
        self,
        sni: str | None = None,
        tls_version: str | None = None,
        alpn: str | None = None,
        ja4: str | None = None,
    ) -> None:
        self.sni = sni
        self.tls_version = tls_version
        self.alpn = alpn
        self.ja4 = ja4

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HelloSeen):
            return NotImplemented
        return (self.sni, self.tls_version, self.alpn, self.ja4) == (
            other.sni,
            other.tls_version,
            other.alpn,
            other.ja4,
        )

    def __hash__(self) -> int:
        return hash((self.sni, self.tls_version, self.alpn, self.ja4))

    def __repr__(self) -> str:
        return (
            f"HelloSeen(sni={self.sni!r}, tls_version={self.tls_version!r}, "
            f"alpn={self.alpn!r}, ja4={self.ja4!r})"
        )


NOTHING_SEEN: Final = HelloSeen()


class Verdict:
    """The guard's decision: pass (`reason` None) or refuse with a metric `reason` and the
    access log's `error` text; `seen` is what the log shows of the hello either way."""

    __slots__ = ("error", "reason", "seen")

    def __init__(
        self, seen: HelloSeen, reason: TLSReason | None = None, error: str | None = None
    ) -> None:
        self.seen = seen
        self.reason = reason
        self.error = error

    @property
    def refused(self) -> bool:
        return self.reason is not None

    def __repr__(self) -> str:
        return f"Verdict({self.reason or 'pass'}: {self.error!r}, {self.seen!r})"


# JA4 by what it is computed from. A site's clients are a handful of TLS stacks, each sending
# the same suites, extensions and signature algorithms every time, and computing the fingerprint
# (filtering, sorting, spelling and hashing three lists) cost as much as reading the hello. Kept
# small and emptied when full, so hellos that differ every time (a browser's random GREASE and
# extension order) cost one failed lookup and cannot grow it.
_JA4_CACHE: dict[tuple[object, ...], str] = {}
_JA4_CACHE_SIZE: Final = 256


def _ja4_of(hello: ClientHello) -> str:
    alpn = hello.alpn
    key = (
        hello.version,
        alpn[0] if alpn else None,
        hello.cipher_bytes,
        hello.extension_bytes,
        hello.signature_bytes,
    )
    found = _JA4_CACHE.get(key)
    if found is None:
        found = ja4(hello)
        if len(_JA4_CACHE) >= _JA4_CACHE_SIZE:
            _JA4_CACHE.clear()
        _JA4_CACHE[key] = found
    return found


def seen_of(hello: ClientHello) -> HelloSeen:
    """The access log's fields of a complete ClientHello."""
    alpn = ",".join([p.decode("ascii", "backslashreplace") for p in hello.alpn])
    return HelloSeen(
        sni=_shown(hello.server_name) if hello.server_name is not None else None,
        tls_version=hello.version_text,
        alpn=alpn or None,
        ja4=_ja4_of(hello),
    )


def judge(
    mode: TLSMode, host: str, ip_literal: bool, data: bytes | bytearray, ended: Ended = None
) -> Verdict | NeedMore:
    """The verdict on `data`, everything the client has sent into the tunnel so far, or
    `NeedMore` when the guard should read on (until the buffer holds `needed` bytes).

    `host` is the CONNECT target's host as the request parser normalised it, `ip_literal` whether
    it is an IP address. `mode` is the deciding policy's `tls`, never "off" (the flow does not
    call the guard then). `observe` never refuses: it answers a pass with whatever was seen.
    """
    try:
        result = _parse(data)
    except ClientHelloError:
        return _refuse(mode, NOTHING_SEEN, "not_tls", "not TLS")
    if isinstance(result, NeedMore):
        if ended == "timeout":
            return _refuse(mode, NOTHING_SEEN, "timeout", "timeout")
        if ended == "eof" or len(data) >= HELLO_LIMIT or result.needed > HELLO_LIMIT:
            return _refuse(mode, NOTHING_SEEN, "incomplete", "incomplete ClientHello")
        return result
    seen = seen_of(result)
    if mode != "verify_sni":
        return Verdict(seen)
    name = result.server_name
    if name is None:
        if ip_literal:
            return Verdict(seen)
        return Verdict(seen, "no_sni", "no server_name")
    if ip_literal or _normalised(name) != host:
        return Verdict(
            seen, "sni_mismatch", f"server_name {_shown(name)} does not match host {host}"
        )
    return Verdict(seen)


def _refuse(mode: TLSMode, seen: HelloSeen, reason: TLSReason, error: str) -> Verdict:
    if mode == "observe":
        return Verdict(seen)
    return Verdict(seen, reason, error)


def _normalised(name: str) -> str:
    """The server_name as section 4 step 3 normalises a host: lowercase, one trailing dot
    dropped. Not checked for validity: it is only compared with the CONNECT host, which the
    request parser has checked, so an invalid name can never equal it (the parser's check,
    wire/hostnames.py, costs a regular expression per tunnel here for nothing)."""
    lowered = name.lower()  # the parser admits printable ASCII only: no Unicode case rules
    return lowered[:-1] if lowered.endswith(".") else lowered


def _shown(name: str) -> str:
    return name if len(name) <= _MAX_SHOWN else name[:_MAX_SHOWN] + "..."
