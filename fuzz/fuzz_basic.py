"""atheris target: the Proxy-Authorization Basic decoder.

Header values reach it as latin-1 text of whatever bytes the client sent. It must return None or
a (user, password) pair without control characters that re-encodes to the same credentials.
"""

from __future__ import annotations

import base64
import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.wire.http import parse_basic_credentials


def check(value: str) -> None:
    result = parse_basic_credentials(value)
    if result is None:
        return
    user, password = result
    if not user or ":" in user:
        raise AssertionError(f"bad user name {user!r}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user + password):
        raise AssertionError("control character in decoded credentials")
    token = value.strip(" \t").partition(" ")[2].strip(" ")
    if base64.b64decode(token) != f"{user}:{password}".encode():
        raise AssertionError("decoded credentials do not re-encode to the token")


def test_one_input(data: bytes) -> None:
    check(data.decode("latin-1"))
    # The same bytes as the decoded payload of a well-formed header, to get past base64.
    check("Basic " + base64.b64encode(data).decode("ascii"))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
