"""Address normalisation and network membership (`connectproxy.matching.addresses`).

These functions decide two security questions: is a client's source inside an admitted network,
and is a destination inside a denied one. Each test below is a spelling of an address that must be
judged exactly as its plain IPv4 or IPv6 form.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.config.model import DEFAULT_DENY_NETWORKS
from connectproxy.matching.addresses import (
    address_text,
    embedded_ipv4,
    endpoint_text,
    in_networks,
    is_denied,
    normalise,
    parse_address,
)
from connectproxy.matching.netset import IPNetwork


def nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ip_network(c) for c in cidrs)


def teredo(client: str, server: str = "65.54.227.120") -> IPv6Address:
    """The Teredo address (RFC 4380) of `client`: 2001:0::/32, server, flags/port, ~client."""
    value = (0x2001_0000 << 96) | (int(IPv4Address(server)) << 64)
    value |= (0x8000_63BF << 32) | (int(IPv4Address(client)) ^ 0xFFFF_FFFF)
    return IPv6Address(value)


# --- normalise ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:0:0", "0.0.0.0"),
        ("10.0.0.5", "10.0.0.5"),
        ("::1", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        # NAT64 and 6to4 are routed as IPv6; only the mapped form *is* an IPv4 address.
        ("64:ff9b::a00:5", "64:ff9b::a00:5"),
        ("2002:a00:5::", "2002:a00:5::"),
    ],
)
def test_normalise(given_: str, expected: str) -> None:
    assert normalise(ip_address(given_)) == ip_address(expected)


def test_normalise_returns_ipv4_type_for_mapped() -> None:
    assert isinstance(normalise(ip_address("::ffff:192.0.2.1")), IPv4Address)


@given(st.ip_addresses(v=4))
@settings(max_examples=200)
def test_normalise_undoes_mapping(addr: IPv4Address) -> None:
    mapped = IPv6Address(f"::ffff:{addr}")
    assert normalise(mapped) == addr
    assert normalise(addr) == addr


# --- parse_address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%2", "fe80::1"),
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("::ffff:10.0.0.5%eth0", "10.0.0.5"),
        ("2001:DB8::1", "2001:db8::1"),
    ],
)
def test_parse_address(text: str, expected: str) -> None:
    assert parse_address(text) == ip_address(expected)


@pytest.mark.parametrize("text", ["", "localhost", "10.0.0", "%eth0", "10.0.0.256", "::g"])
def test_parse_address_rejects_non_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# --- embedded_ipv4 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v6", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2002:7f00:1::", "127.0.0.1"),  # 6to4
        ("2002:a9fe:a9fe:1234::1", "169.254.169.254"),
        (str(teredo("127.0.0.1")), "127.0.0.1"),  # Teredo: the client address, un-inverted
        (str(teredo("10.1.2.3")), "10.1.2.3"),
    ],
)
def test_embedded_ipv4(v6: str, inner: str) -> None:
    assert embedded_ipv4(IPv6Address(v6)) == IPv4Address(inner)


@pytest.mark.parametrize("v6", ["::1", "2001:db8::7f00:1", "fc00::7f00:1", "fe80::1", "::"])
def test_embedded_ipv4_none_for_plain_ipv6(v6: str) -> None:
    assert embedded_ipv4(IPv6Address(v6)) is None


def test_teredo_helper_matches_the_standard_library() -> None:
    """The helper above is itself checked, so the Teredo cases test what they claim."""
    assert teredo("127.0.0.1").teredo == (IPv4Address("65.54.227.120"), IPv4Address("127.0.0.1"))


# --- in_networks --------------------------------------------------------------------------------


def test_in_networks_ignores_other_family() -> None:
    both = nets("10.0.0.0/8", "fd00::/8")
    assert in_networks(ip_address("10.9.9.9"), both)
    assert in_networks(ip_address("fd00::5"), both)
    assert not in_networks(ip_address("11.0.0.1"), both)
    assert not in_networks(ip_address("fe80::1"), both)


def test_in_networks_only_other_family_is_false_not_an_error() -> None:
    assert not in_networks(ip_address("10.0.0.1"), nets("::/0"))
    assert not in_networks(ip_address("::1"), nets("0.0.0.0/0"))


def test_in_networks_empty_and_generator() -> None:
    assert not in_networks(ip_address("10.0.0.1"), ())
    assert in_networks(ip_address("10.0.0.1"), (n for n in nets("10.0.0.0/8")))


def test_in_networks_does_not_normalise_by_itself() -> None:
    """Callers normalise first; a mapped address is IPv6 to this function."""
    assert not in_networks(ip_address("::ffff:10.0.0.1"), nets("10.0.0.0/8"))
    assert in_networks(normalise(ip_address("::ffff:10.0.0.1")), nets("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("addr", "cidr", "inside"),
    [
        ("10.0.0.0", "10.0.0.0/8", True),
        ("10.255.255.255", "10.0.0.0/8", True),
        ("11.0.0.0", "10.0.0.0/8", False),
        ("10.100.100.1", "10.100.100.1/32", True),
        ("10.100.100.2", "10.100.100.1/32", False),
        ("2001:db8::1", "2001:db8::/32", True),
        ("2001:db9::1", "2001:db8::/32", False),
    ],
)
def test_in_networks_edges(addr: str, cidr: str, inside: bool) -> None:
    assert in_networks(ip_address(addr), nets(cidr)) is inside


# --- is_denied ----------------------------------------------------------------------------------

DENIED_BY_DEFAULT = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "169.254.169.254",  # cloud metadata
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "febf::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    str(teredo("127.0.0.1")),
    str(teredo("169.254.169.254")),
]
ALLOWED_BY_DEFAULT = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "20.50.1.1",
    "fc00::1",
    "fd00:ec2::254",
    "2603:1000::1",
    "::ffff:10.1.2.3",
    "64:ff9b::a01:203",
    "2002:a01:203::",
    str(teredo("10.1.2.3")),
]


@pytest.mark.parametrize("addr", DENIED_BY_DEFAULT)
def test_is_denied_by_default(addr: str) -> None:
    assert is_denied(ip_address(addr), DEFAULT_DENY_NETWORKS)


@pytest.mark.parametrize("addr", ALLOWED_BY_DEFAULT)
def test_not_denied_by_default(addr: str) -> None:
    assert not is_denied(ip_address(addr), DEFAULT_DENY_NETWORKS)


def test_is_denied_unwraps_against_a_custom_ipv4_only_list() -> None:
    """An operator lists 10.0.0.0/8 only; every IPv6 wrapping of 10.x is denied as well."""
    deny = nets("10.0.0.0/8")
    for addr in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::"):
        assert is_denied(ip_address(addr), deny), addr
    assert is_denied(teredo("10.1.2.3"), deny)
    assert not is_denied(ip_address("11.1.2.3"), deny)
    assert not is_denied(ip_address("2001:db8::1"), deny)


def test_is_denied_with_empty_list_denies_nothing() -> None:
    assert not is_denied(ip_address("127.0.0.1"), ())
    assert not is_denied(ip_address("64:ff9b::7f00:1"), ())


def test_is_denied_accepts_a_generator() -> None:
    deny = (n for n in nets("127.0.0.0/8"))
    assert is_denied(ip_address("64:ff9b::7f00:1"), deny)


@given(st.ip_addresses(v=4))
@settings(max_examples=300)
def test_every_wrapping_is_judged_as_the_ipv4_address(addr: IPv4Address) -> None:
    """Mapped, NAT64, 6to4 and Teredo spellings of an address are denied exactly when it is."""
    expected = is_denied(addr, DEFAULT_DENY_NETWORKS)
    n = int(addr)
    wrappings = [
        IPv6Address((0xFFFF << 32) | n),
        IPv6Address(int(IPv6Address("64:ff9b::")) | n),
        IPv6Address((0x2002 << 112) | (n << 80)),
        teredo(str(addr)),
    ]
    for wrapped in wrappings:
        assert is_denied(wrapped, DEFAULT_DENY_NETWORKS) is expected, wrapped


def test_default_deny_list_is_what_the_spec_names() -> None:
    expected = {
        ipaddress.ip_network(c)
        for c in (
            "0.0.0.0/8",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/128",
            "::1/128",
            "fe80::/10",
            "ff00::/8",
        )
    }
    assert expected <= set(DEFAULT_DENY_NETWORKS)
    private = nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    for deny in DEFAULT_DENY_NETWORKS:
        for net in private:
            assert deny.version != net.version or not deny.overlaps(net), (deny, net)


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("127.0.0.1", 443, "127.0.0.1:443"),
        ("2001:db8::1", 8443, "[2001:db8::1]:8443"),
        ("::1", 1, "[::1]:1"),
    ],
)
def test_endpoint_text_is_how_logs_show_a_connected_peer(
    text: str, port: int, expected: str
) -> None:
    assert endpoint_text(ipaddress.ip_address(text), port) == expected
    assert address_text(ipaddress.ip_address(text)) == text
