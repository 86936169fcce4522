"""Set algebra on what Squid ACLs match: networks, domain patterns and ports, as pure functions.

The translation reasons about http_access lines as sets of requests: an allow line minus the
deny lines above it, two ACLs on one line intersected, a `!acl` complemented. Each dimension of a
request is a set with a shape that keeps that algebra exact and small:

- source and destination addresses are lists of CIDR blocks, which either nest or are disjoint,
  so intersection and difference stay lists of blocks (IPv4 and IPv6 kept apart);
- hosts are connectproxy domain patterns (`example.com`, `.example.com`), whose trees also nest
  or are disjoint, so the overlap of two patterns is the inner one or nothing;
- ports are frozensets of numbers, with `ALL_PORTS` as the universe of a `!port_acl`.

Nothing here reports or raises: the callers decide what a set that became empty means.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar

from connectproxy.matching.domains import DomainPattern, covers
from connectproxy.matching.netset import IPNetwork

__all__ = [
    "ALL_PORTS",
    "ANYWHERE",
    "collapse",
    "complement",
    "covers",
    "intersect",
    "intersect_patterns",
    "ipv4_mapped",
    "net_text",
    "subtract",
    "unique_patterns",
]

ALL_PORTS = frozenset(range(1, 65536))

ANYWHERE: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)

_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


# --- domain patterns --------------------------------------------------------------------------


def intersect_patterns(
    first: Iterable[DomainPattern], second: Iterable[DomainPattern]
) -> tuple[DomainPattern, ...]:
    """Hosts matched by both lists (two ACLs ANDed on one line). Domain trees nest, so each
    pair either nests, and the inner pattern is the overlap, or does not overlap at all."""
    second = tuple(second)
    found = []
    for a in first:
        for b in second:
            if covers(a, b):
                found.append(b)
            elif covers(b, a):
                found.append(a)
    return unique_patterns(found)


def unique_patterns(patterns: Iterable[DomainPattern]) -> tuple[DomainPattern, ...]:
    """Each pattern once, first occurrence first: allow.domains keeps the order of squid.conf."""
    seen: dict[str, DomainPattern] = {}
    for pattern in patterns:
        seen.setdefault(pattern.text, pattern)
    return tuple(seen.values())


# --- network sets ----------------------------------------------------------------------------


def _split(
    nets: Iterable[IPNetwork],
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return v4, v6


def collapse(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The fewest blocks covering the same addresses, IPv4 first, so equal sets compare equal."""
    v4, v6 = _split(nets)
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def intersect(first: Iterable[IPNetwork], second: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Addresses in both (two src acls on one line)."""
    a4, a6 = _split(first)
    b4, b6 = _split(second)
    return collapse((*_family_intersect(a4, b4), *_family_intersect(a6, b6)))


def subtract(first: Iterable[IPNetwork], second: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Addresses in `first` and not in `second` (a deny line's sources taken away)."""
    a4, a6 = _split(first)
    b4, b6 = _split(second)
    return collapse((*_family_subtract(a4, b4), *_family_subtract(a6, b6)))


def complement(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Every address not in `nets` (a `!src_acl`)."""
    return subtract(ANYWHERE, nets)


def _family_intersect(first: list[_N], second: list[_N]) -> list[_N]:
    """CIDR blocks either nest or are disjoint, so the overlap of two is the smaller one."""
    found = []
    for a in first:
        for b in second:
            if a.subnet_of(b):
                found.append(a)
            elif b.subnet_of(a):
                found.append(b)
    return found


def _family_subtract(first: list[_N], second: list[_N]) -> list[_N]:
    remaining = list(first)
    for cut in second:
        next_round: list[_N] = []
        for block in remaining:
            if block.subnet_of(cut):
                continue
            if cut.subnet_of(block):
                next_round.extend(block.address_exclude(cut))
            else:
                next_round.append(block)
        remaining = next_round
    return remaining


def ipv4_mapped(net: IPNetwork) -> bool:
    """An ::ffff:a.b.c.d block, which connectproxy checks as the IPv4 block it maps."""
    return isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None


def net_text(net: IPNetwork) -> str:
    """A single address without its /32 or /128, as operators write it."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)
