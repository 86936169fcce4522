"""A set of IP networks that answers membership with integer comparisons.

Every resolved destination address is checked against `destinations.deny_networks` (14 networks
by default). `address in network` from the ipaddress module runs in Python: its `__contains__`
and `version` property cost 1.5 µs for one IPv4 address against the default list, about 2% of a
tunnel's set-up per address. Here each network is its first and last address as integers, and
the check is a loop of comparisons in compiled code (setup.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkSet:
    """Immutable; an address of one family never matches a network of the other."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in networks:
            bounds = (int(net.network_address), int(net.broadcast_address))
            if isinstance(net, ipaddress.IPv4Network):
                v4.append(bounds)
            else:
                v6.append(bounds)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)

    def __contains__(self, addr: IPAddress) -> bool:
        value = int(addr)
        ranges = self._v4 if isinstance(addr, ipaddress.IPv4Address) else self._v6
        return any(first <= value <= last for first, last in ranges)


class NetworkIndex:
    """Numbered networks, answering which is the first (lowest number) holding an address.

    Admission asks this of every client's networks: the first client in the list whose networks
    hold the source wins. With a thousand clients a walk over their network sets cost a thousand
    checks per connection; here the networks are filed by prefix length, and an address costs
    one dictionary lookup per distinct prefix length in the config (a handful), whatever the
    number of clients. An address of one family never matches a network of the other.
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, numbered: Iterable[tuple[IPNetwork, int]]) -> None:
        v4: dict[int, dict[int, int]] = {}
        v6: dict[int, dict[int, int]] = {}
        for net, number in numbered:
            is_v4 = isinstance(net, ipaddress.IPv4Network)
            shift = (32 if is_v4 else 128) - net.prefixlen
            table = (v4 if is_v4 else v6).setdefault(shift, {})
            key = int(net.network_address) >> shift
            held = table.get(key, -1)
            if held < 0 or number < held:  # a network listed twice answers with its lower number
                table[key] = number
        self._v4 = tuple(sorted(v4.items()))
        self._v6 = tuple(sorted(v6.items()))

    def first(self, addr: IPAddress) -> int:
        """The lowest number of a network holding `addr`, or -1."""
        value = int(addr)
        tables = self._v4 if isinstance(addr, ipaddress.IPv4Address) else self._v6
        best = -1
        for shift, table in tables:
            number = table.get(value >> shift, -1)
            if number >= 0 and (best < 0 or number < best):
                best = number
        return best
