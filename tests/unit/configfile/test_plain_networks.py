"""`plain_ipv4_network`, the shortcut `network` takes for the common `a.b.c.d/n`, against
`ipaddress.ip_network`: whatever the shortcut reads, ip_network reads the same; whatever it
leaves (None), ip_network still reads or refuses as before."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.configfile.netvalues import plain_ipv4_network

PARTS = st.sampled_from(
    ["0", "00", "01", "1", "9", "10", "99", "127", "192", "255", "256", "300", "999", "0255",
     "", " 1", "1 ", "+1", "-1", "٣", "x", "0x1"]
)  # fmt: skip
PREFIXES = st.sampled_from(
    ["0", "00", "1", "8", "08", "16", "24", "31", "32", "33", "024", "", "255.0.0.0", "-8", "٣"]
)


def agree(text: str) -> None:
    plain = plain_ipv4_network(text)
    try:
        expected: object = ipaddress.ip_network(text)
    except ValueError:
        expected = None
    if plain is not None:
        assert plain == expected
        assert (str(plain), type(plain)) == (str(expected), type(expected))


@settings(max_examples=2000)
@given(st.lists(PARTS, min_size=3, max_size=5), st.sampled_from(["/", "", "//", "/ "]), PREFIXES)
def test_the_shortcut_reads_only_what_ip_network_reads_the_same(
    octets: list[str], slash: str, prefix: str
) -> None:
    agree(".".join(octets) + slash + prefix)


@settings(max_examples=1000)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_the_shortcut_reads_every_plain_network(value: int, length: int) -> None:
    network = ipaddress.IPv4Network((value >> (32 - length) << (32 - length), length))
    assert plain_ipv4_network(str(network)) == network
    agree(str(network))
    agree(f"{ipaddress.IPv4Address(value)}/{length}")  # host bits, mostly


def test_what_the_shortcut_leaves_to_ip_network() -> None:
    for text in ["10.0.0.1", "10.0.0.0/255.0.0.0", "10.0.0.0/08", "010.0.0.0/8", "fd00::/8"]:
        assert plain_ipv4_network(text) is None
