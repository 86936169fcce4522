"""`normalise_hostname` against the rules spelled out one label at a time: its quick path for
valid names (`_plain_name`) must accept exactly the names the rules accept."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectproxy.wire.hostnames import normalise_hostname

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")


def by_the_rules(name: str) -> str:
    """The reference: every check in order, with normalise_hostname's messages."""
    if not name.isascii():
        raise ValueError("host name is not ASCII")
    host = name.lower().removesuffix(".")
    if not host:
        raise ValueError("host name is empty")
    if len(host) > 253:
        raise ValueError("host name is longer than 253 characters")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise ValueError("host name has an empty label")
        if len(label) > 63:
            raise ValueError("host name has a label longer than 63 characters")
        if not _LABEL.match(label):
            raise ValueError("host name has a label that is not letters, digits and inner hyphens")
    if _NUMERIC_LABEL.match(labels[-1]):
        raise ValueError("host name ends in a numeric label (an IP address in disguise)")
    return host


def outcome(name: str, function: object) -> tuple[bool, str]:
    assert callable(function)
    try:
        return True, function(name)
    except ValueError as error:
        return False, str(error)


# Names near the rules' edges: LDH characters, dots, upper case, an x for 0x, and now and then
# anything else; labels up to 70 characters, so both length limits are crossed.
_LABELS = st.text(alphabet="abz09-.A_x*", max_size=70) | st.from_regex(
    r"[a-z0-9](?:[a-z0-9-]{0,64}[a-z0-9])?", fullmatch=True
)
_NAMES = st.lists(_LABELS, min_size=1, max_size=6).map(".".join) | st.text(max_size=80)


@settings(max_examples=1000)
@given(_NAMES)
@example("a" * 63)
@example("a" * 64)
@example("b." + "a" * 64)
@example("-")
@example(".-.")
@example("--")
@example("a-.b")
@example("a.-b")
@example("a..b")
@example("example.com.")
@example("Example.COM")
@example("host.0x1f")
@example("127.1")
@example("a_b.example")
def test_normalise_hostname_follows_the_rules(name: str) -> None:
    assert outcome(name, normalise_hostname) == outcome(name, by_the_rules)
