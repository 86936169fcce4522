"""atheris target: the TLS ClientHello reader and JA4 (wire/tlshello.py).

The input is what a client sends into a tunnel; the seeds (fuzz/corpus/tlshello/) are real hellos:
Python's ssl, openssl s_client, curl, Go's crypto/tls and Chromium 156 (with its post-quantum key
share) captured on loopback, and browsers and other clients from the published captures of
FoxIO's JA4 repository. Properties beyond "no exception but ClientHelloError":

- fed the way the guard feeds it (the input's length picks the read size), the answers are
  NeedMore until one verdict, and the verdict never changes as more bytes arrive; every NeedMore
  promises fewer bytes than the hello then took;
- a hello claims no more bytes than were given, and those bytes alone give the same hello;
- the same handshake message cut into records of another size gives the same hello;
- JA4 of any hello has the specification's shape.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.wire.tlshello import (
        ClientHello,
        ClientHelloError,
        NeedMore,
        ja4,
        parse_client_hello,
    )

JA4_SHAPE = re.compile(
    r"t(1[0-3]|s[23]|d[1-3]|00)[di]\d{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}"
)


def outcome(data: bytes) -> ClientHello | NeedMore | str:
    try:
        return parse_client_hello(data)
    except ClientHelloError as error:
        if error.cause != "not TLS" or not error.reason:
            raise AssertionError(f"unexpected error {error.cause!r} {error.reason!r}") from None
        return "error"


def fed_in_reads(data: bytes, read_size: int) -> ClientHello | NeedMore | str:
    """Each read's answer, as the guard would see them; returns the last."""
    needs: list[NeedMore] = []
    verdict: ClientHello | NeedMore | str = NeedMore(0)
    for end in [*range(read_size, len(data), read_size), len(data)]:
        answer = outcome(data[:end])
        if isinstance(answer, NeedMore):
            if not isinstance(verdict, NeedMore):
                raise AssertionError(f"verdict {verdict!r} turned back into NeedMore at {end}")
            if answer.needed <= end:
                raise AssertionError(f"NeedMore({answer.needed}) with {end} bytes in hand")
            needs.append(answer)
        elif isinstance(verdict, NeedMore):
            verdict = answer
        elif answer != verdict:
            raise AssertionError(f"verdict changed at {end}: {verdict!r} -> {answer!r}")
    if isinstance(verdict, NeedMore):
        return needs[-1] if needs else verdict
    if isinstance(verdict, ClientHello):
        for need in needs:
            if need.needed > verdict.length:
                raise AssertionError(f"NeedMore({need.needed}) past a {verdict.length}-byte hello")
    return verdict


def reframed(data: bytes, length: int, size: int) -> bytes:
    """The handshake message of the records in data[:length], in records of `size` bytes."""
    message = b""
    pos = 0
    while pos < length:
        fragment = int.from_bytes(data[pos + 3 : pos + 5], "big")
        message += data[pos + 5 : pos + 5 + fragment]
        pos += 5 + fragment
    version = data[1:3]
    return b"".join(
        b"\x16" + version + len(part).to_bytes(2, "big") + part
        for part in (message[i : i + size] for i in range(0, len(message), size))
    )


def test_one_input(data: bytes) -> None:
    # At most about 64 reads, so a 2 KB hello costs 64 parses, not 2,000.
    read_size = max(1 + len(data) % 61, len(data) // 64)
    whole = outcome(data)
    if fed_in_reads(data, read_size) != whole:
        raise AssertionError("reading in pieces changed the verdict")
    if not isinstance(whole, ClientHello):
        return
    if not 0 < whole.length <= len(data):
        raise AssertionError(f"hello length {whole.length} outside the {len(data)} given")
    if outcome(data[: whole.length]) != whole:
        raise AssertionError("the hello's own bytes give another answer")
    fingerprint = ja4(whole)
    if not JA4_SHAPE.fullmatch(fingerprint):
        raise AssertionError(f"malformed JA4 {fingerprint!r}")
    size = 1 + data[-1] % 300
    again = reframed(data, whole.length, size)
    if outcome(again) != replace(whole, length=len(again)):
        raise AssertionError(f"records of {size} bytes give another hello")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
