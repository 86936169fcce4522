"""atheris target: the CONNECT request-head parser, fed the way the server feeds it.

The first input byte picks the size limit and how the rest is cut into reads, so the fuzzer
explores split deliveries as well as whole heads. The only exception allowed out of the parser is
RequestError with a status the server knows how to answer; any other exception is a crash.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.wire.http import (
        Request,
        RequestError,
        find_head_end,
        parse_head,
        take_request,
    )

STATUSES = (400, 405, 431)


def verdict(data: bytes, read_size: int, limit: int) -> Request | int:
    received = b""
    for start in range(0, max(len(data), 1), read_size):
        received += data[start : start + read_size]
        try:
            taken = take_request(received, limit)
            if taken is not None:
                return taken[0]
        except RequestError as error:
            if error.status not in STATUSES:
                raise AssertionError(f"unexpected status {error.status}") from None
            return error.status
    return 0


def two_steps(data: bytes, limit: int) -> Request | int:
    """find_head_end, then parse_head on exactly the head: what take_request must agree with."""
    try:
        end = find_head_end(data, limit)
        return 0 if end < 0 else parse_head(data[:end])
    except RequestError as error:
        return error.status


def test_one_input(data: bytes) -> None:
    if not data:
        return
    control, body = data[0], data[1:]
    limit = 64 + (control & 0x0F) * 512
    read_size = 1 + (control >> 4) * 7
    whole = verdict(body, len(body) or 1, limit)
    pieces = verdict(body, read_size, limit)
    if whole != pieces:
        raise AssertionError(f"split delivery changed the verdict: {whole!r} != {pieces!r}")
    if whole != two_steps(body, limit):
        raise AssertionError(f"take_request disagrees with find_head_end + parse_head: {whole!r}")
    if isinstance(whole, Request):
        # An accepted target is in normal form: its authority parses back to itself.
        again = parse_head(f"CONNECT {whole.target.authority} HTTP/1.1\r\n\r\n".encode())
        if again.target != whole.target:
            raise AssertionError(f"target not stable: {whole.target} -> {again.target}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
