"""IP address normalisation and network membership.

Two attacks hide in address forms: a source written as `::ffff:10.0.0.1` must be admitted (or not)
exactly as `10.0.0.1`, and a destination such as `64:ff9b::7f00:1` (NAT64) or `2002:7f00:1::`
(6to4) must be denied exactly as `127.0.0.1`. Everything here is pure.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from connectproxy.matching.netset import IPAddress, IPNetwork, NetworkSet

# What accept(), getpeername() and getsockname() hand over for a TCP socket: (host, port) from an
# IPv4 socket, (host, port, flowinfo, scope_id) from an IPv6 one, and a dual-stack listener is an
# IPv6 socket for IPv4 clients too. Compiled (setup.py), an annotation is checked when a value
# crosses it, so every peer or socket address is declared with both shapes, never (str, int).
SocketAddress = tuple[str, int] | tuple[str, int, int, int]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def normalise(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address becomes the IPv4 address it carries."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress:
    """Parse a socket address string (which may carry an IPv6 zone) and normalise it.

    Cached because the ipaddress module takes about 1.6 us per parse and every connection parses
    its source, while a plant has a fixed set of sensors; the result is immutable."""
    return normalise(ipaddress.ip_address(text.split("%", 1)[0]))


@functools.lru_cache(maxsize=4096)
def address_text(addr: IPAddress) -> str:
    """str() of an ipaddress object runs in Python (0.6 us for IPv4, 3 us for IPv6), and a
    plant's sensors reach the same few destinations again and again."""
    return str(addr)


def peer_host(host: str) -> str:
    """A peer's address as logs show it. A dual-stack listener sees an IPv4 client as
    ::ffff:a.b.c.d: it is shown as a.b.c.d, the address admission and the per-source limit use,
    and what an IPv4 listener shows for the same client. Other addresses stay as the socket gave
    them (an IPv6 zone included)."""
    if ":" in host:
        addr = parse_address(host)
        if isinstance(addr, ipaddress.IPv4Address):
            return address_text(addr)
    return host


def endpoint_text(addr: IPAddress, port: int) -> str:
    """ "host:port" or "[v6]:port", as logs show a connected peer."""
    host = address_text(addr)
    return f"{host}:{port}" if isinstance(addr, ipaddress.IPv4Address) else f"[{host}]:{port}"


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries, if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if int(addr) >> 32 == 0 and int(addr) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(addr))
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _TEREDO and addr.teredo is not None:
        return addr.teredo[1]
    return None


def in_networks(addr: IPAddress, networks: NetworkSet | Iterable[IPNetwork]) -> bool:
    """Membership that ignores networks of the other family instead of raising. The connection
    path passes a config object's ready `network_set`; any other iterable is made into one."""
    return addr in (networks if isinstance(networks, NetworkSet) else NetworkSet(networks))


def is_denied(addr: IPAddress, deny: NetworkSet | Iterable[IPNetwork]) -> bool:
    """True if `addr`, or an IPv4 address embedded in it, lies in a denied network.

    The connection path passes a ready NetworkSet (`Destinations.deny_set`); any other iterable
    of networks is made into one first."""
    denied = deny if isinstance(deny, NetworkSet) else NetworkSet(deny)
    addr = normalise(addr)
    if addr in denied:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None and inner in denied:
            return True
    return False
