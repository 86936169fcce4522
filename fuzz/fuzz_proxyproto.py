"""atheris target: the PROXY protocol v1/v2 header parser.

The first byte picks the mode. Property checked beyond "no exception but ProxyHeaderError":
answers are monotonic in the bytes received (a header or an error never turns back into
"need more"), and a header never claims more bytes than were given.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.wire.proxyproto import (
        ProxyHeader,
        ProxyHeaderError,
        ProxyHeaderMode,
        parse_proxy_header,
    )

MODES: tuple[ProxyHeaderMode, ...] = ("v1", "v2", "any")


def outcome(data: bytes, mode: ProxyHeaderMode) -> ProxyHeader | str | None:
    try:
        return parse_proxy_header(data, mode)
    except ProxyHeaderError:
        return "error"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = MODES[data[0] % 3], data[1:]
    final = outcome(body, mode)
    if isinstance(final, ProxyHeader):
        if not 0 < final.length <= len(body):
            raise AssertionError(f"header length {final.length} outside the {len(body)} given")
        if outcome(body[: final.length], mode) != final:
            raise AssertionError("the header alone does not parse to the same header")
        if outcome(body[: final.length - 1], mode) is not None:
            raise AssertionError("one byte short of a header is not 'need more'")
    # Every prefix that already had an answer keeps it.
    step = max(1, len(body) // 16)
    previous: ProxyHeader | str | None = None
    for end in range(0, len(body) + 1, step):
        current = outcome(body[:end], mode)
        if previous is not None and current != previous:
            raise AssertionError(f"answer changed from {previous!r} to {current!r} at {end}")
        previous = current


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
