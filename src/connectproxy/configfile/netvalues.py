"""Network values: listening addresses, IP addresses, CIDR networks and domain patterns.

The text parsing (`split_host_port`) raises ValueError without knowing where the text came from,
so the upstream URL check can reuse it; the converters here add the key path and line.
Networks are normalised the way sources are at run time (IPv4-mapped IPv6 to IPv4), so what an
operator writes can actually match.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from connectproxy.configfile.checker import Checker, describe, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.scalars import string
from connectproxy.matching.addresses import normalise
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPAddress, IPNetwork
from connectproxy.wire.hostnames import normalise_hostname

__all__ = [
    "address",
    "domain_patterns",
    "ip_address",
    "network",
    "networks",
    "plain_ipv4_network",
    "split_host_port",
]


def _port(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", text) or int(text) > 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return int(text)


def split_host_port(text: str, example: str = "0.0.0.0:3128") -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into host (without brackets) and port.

    Raises ValueError saying what is wrong; the caller adds where.
    """
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError('needs a port after the address, as in "[::]:3128"')
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"{inside!r} is not an IPv6 address") from None
        return host, _port(rest[1:])
    host_text, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f'needs a port, as in "{example}"')
    if ":" in host_text:
        raise ValueError('an IPv6 address goes in brackets, as in "[::]:3128"')
    if not host_text:
        raise ValueError(
            'needs a host: "[::]:3128" for every IPv4 and IPv6 address, "0.0.0.0:3128" for '
            "IPv4 only"
        )
    try:
        host = str(ipaddress.IPv4Address(host_text))
    except ValueError:
        try:
            host = normalise_hostname(host_text)
        except ValueError as error:
            raise ValueError(f"{host_text!r} is not an IP address or host name: {error}") from None
    return host, _port(port_text)


def _unmap_network(network: IPNetwork) -> IPNetwork:
    """::ffff:10.0.0.0/104 means 10.0.0.0/8; sources are normalised the same way, so only the
    IPv4 form can ever match."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def plain_ipv4_network(text: str) -> ipaddress.IPv4Network | None:
    """`a.b.c.d/n` in its plain spelling (decimal, no leading zeros, no host bits), as
    `ipaddress.ip_network` reads it, or None for anything else, which ip_network then reads or
    refuses with its reason. A config may list a network for each of thousands of clients, and
    this is a third of ip_network's cost (it saves 5 ms of explain's 200 on the large config).
    """
    address, slash, prefix = text.partition("/")
    octets = address.split(".")
    if not slash or len(octets) != 4 or not text.isascii() or not _plain_decimal(prefix, 2):
        return None
    value = 0
    for octet in octets:
        if not _plain_decimal(octet, 3):
            return None
        number = int(octet)
        if number > 255:
            return None
        value = value << 8 | number
    length = int(prefix)
    if length > 32 or value & ((1 << (32 - length)) - 1):
        return None
    return ipaddress.IPv4Network((value, length))


def _plain_decimal(text: str, digits: int) -> bool:
    return 0 < len(text) <= digits and text.isdigit() and (text[0] != "0" or len(text) == 1)


def network(check: Checker, value: Any, where: Where) -> IPNetwork:
    """A CIDR or single address; host bits must be zero so the intent is unambiguous."""
    if not isinstance(value, str):
        raise check.error(where, f'must be a network such as "10.0.0.0/8", not {describe(value)}')
    plain = plain_ipv4_network(value)
    if plain is not None:
        return plain
    try:
        parsed = ipaddress.ip_network(value)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise check.error(
                where,
                f"{value!r} is not an IP address or CIDR network "
                '(for example "10.0.0.0/8", "192.168.1.10" or "fd00::/8")',
            ) from None
        raise check.error(
            where,
            f'{value!r} has host bits set; the network is "{loose}" '
            f'(or write "{value.split("/")[0]}" for the single address)',
        ) from None
    return _unmap_network(parsed)


def networks(check: Checker, value: Any, where: Where) -> tuple[IPNetwork, ...]:
    """A list of networks. A config may list one for each of thousands of clients, so the common
    case (an IPv4 network in its plain spelling) makes no place for its item: `items` is asked
    only for the others."""
    if not isinstance(value, (list, tuple)):
        items(check, value, where)  # raises: not a list
    found: list[IPNetwork] = []
    places: list[tuple[Any, Where]] = []
    for index, item in enumerate(value):
        plain = plain_ipv4_network(item) if isinstance(item, str) else None
        if plain is None:
            places = places or items(check, value, where)
            found.append(network(check, item, places[index][1]))
        else:
            found.append(plain)
    return tuple(found)


def domain_patterns(check: Checker, value: Any, where: Where) -> tuple[DomainPattern, ...]:
    """A policy's `domains`. A policy may list thousands, so the common case (a string that is
    a valid pattern) makes no place for its item: `items` is asked only to name a bad one."""
    if not isinstance(value, (list, tuple)):
        items(check, value, where)  # raises: not a list
    patterns = []
    for index, text in enumerate(value):
        try:
            if not isinstance(text, str):
                raise TypeError
            patterns.append(parse_domain_pattern(text))
        except (TypeError, ValueError) as error:
            at = items(check, value, where)[index][1]
            string(check, text, at)  # raises for a value that is not a string
            raise check.error(
                at,
                f'{text!r} is not a domain pattern: {error}; write ".example.com" '
                '(the domain and its subdomains), "*.example.com" (subdomains only) or '
                '"example.com" (exactly that host)',
            ) from None
    return tuple(patterns)


def address(check: Checker, value: Any, where: Where) -> tuple[str, int]:
    """A "host:port" or "[v6]:port" listening address."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, list | tuple):
            hint = '; quote "[v6]:port" addresses, since YAML reads an unquoted [..] as a list'
        raise check.error(
            where, f'must be "host:port" such as "0.0.0.0:3128", not {describe(value)}{hint}'
        )
    try:
        return split_host_port(value)
    except ValueError as error:
        raise check.error(where, f"{value!r}: {error}") from None


def ip_address(check: Checker, value: Any, where: Where) -> IPAddress:
    text = string(check, value, where)
    try:
        return normalise(ipaddress.ip_address(text))
    except ValueError:
        raise check.error(where, f"{text!r} is not an IP address") from None
