"""`NetworkSet`: the integer-range membership the destination deny check runs on. It must agree
with the ipaddress module's own `address in network` for every address and network."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.config.model import DEFAULT_DENY_NETWORKS, Config, Destinations
from connectproxy.matching.netset import IPAddress, IPNetwork, NetworkIndex, NetworkSet


@st.composite
def networks(draw: st.DrawFn) -> IPNetwork:
    if draw(st.booleans()):
        return IPv4Network((draw(st.ip_addresses(v=4)), draw(st.integers(0, 32))), strict=False)
    return IPv6Network((draw(st.ip_addresses(v=6)), draw(st.integers(0, 128))), strict=False)


@given(st.lists(networks(), max_size=6), st.ip_addresses())
@settings(max_examples=500)
def test_agrees_with_ipaddress(nets: list[IPNetwork], addr: IPAddress) -> None:
    expected = any(addr.version == net.version and addr in net for net in nets)
    assert (addr in NetworkSet(nets)) is expected


@given(st.ip_addresses())
@settings(max_examples=300)
def test_agrees_with_ipaddress_on_the_default_deny_list(addr: IPAddress) -> None:
    expected = any(addr.version == net.version and addr in net for net in DEFAULT_DENY_NETWORKS)
    assert (addr in NetworkSet(DEFAULT_DENY_NETWORKS)) is expected


def test_edges_and_families() -> None:
    nets = NetworkSet([ip_network("10.0.0.0/8"), ip_network("::/128")])
    assert ip_address("10.0.0.0") in nets
    assert ip_address("10.255.255.255") in nets
    assert ip_address("9.255.255.255") not in nets
    assert ip_address("11.0.0.0") not in nets
    assert ip_address("::") in nets
    # 0.0.0.0 and :: are both the integer 0: only the family decides.
    assert ip_address("0.0.0.0") not in nets
    assert ip_address("::a00:1") not in nets  # 10.0.0.1's integer, as IPv6


def test_the_config_builds_its_deny_set_once() -> None:
    destinations = Config().destinations
    assert destinations.deny_set is destinations.deny_set
    assert ip_address("169.254.169.254") in destinations.deny_set
    assert ip_address("20.1.2.3") not in destinations.deny_set
    assert ip_address("127.0.0.1") not in Destinations(deny_networks=()).deny_set


# --- NetworkIndex: the first numbered network holding an address --------------------------------


def first_by_walking(numbered: list[tuple[IPNetwork, int]], addr: IPAddress) -> int:
    """What admission's walk over the clients answered: the lowest number holding `addr`."""
    found = [n for net, n in numbered if addr.version == net.version and addr in net]
    return min(found, default=-1)


@given(st.lists(st.tuples(networks(), st.integers(0, 20)), max_size=8), st.ip_addresses())
@settings(max_examples=500)
def test_index_agrees_with_walking_the_networks(
    numbered: list[tuple[IPNetwork, int]], addr: IPAddress
) -> None:
    assert NetworkIndex(numbered).first(addr) == first_by_walking(numbered, addr)


def test_index_edges_nesting_and_families() -> None:
    numbered = [
        (ip_network("10.0.0.0/8"), 5),
        (ip_network("10.1.0.0/16"), 2),  # nested, lower number: wins inside itself
        (ip_network("10.1.2.3/32"), 7),
        (ip_network("0.0.0.0/0"), 9),
        (ip_network("fd00::/8"), 1),
        (ip_network("10.0.0.0/8"), 6),  # the same network again, higher: changes nothing
    ]
    index = NetworkIndex(numbered)
    assert index.first(ip_address("10.1.2.3")) == 2
    assert index.first(ip_address("10.2.0.0")) == 5
    assert index.first(ip_address("10.255.255.255")) == 5
    assert index.first(ip_address("11.0.0.0")) == 9
    assert index.first(ip_address("fd00::1")) == 1
    assert index.first(ip_address("fe00::1")) == -1  # 0.0.0.0/0 holds no IPv6 address
    assert index.first(ip_address("::ffff:10.1.2.3")) == -1  # mapped: admission normalises first
    assert NetworkIndex([]).first(ip_address("10.0.0.1")) == -1
