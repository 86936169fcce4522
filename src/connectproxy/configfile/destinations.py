"""The `destinations` section: the networks no tunnel may reach, and the static hosts map.

A `hosts` entry whose address is denied would make every tunnel to that name fail at run time
with a 403 that is hard to trace back; it is allowed (the operator may mean it), but warned about.
"""

from __future__ import annotations

from typing import Any

from connectproxy.config.model import Destinations
from connectproxy.configfile.checker import Checker, Section, describe, entries, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.netvalues import ip_address, networks
from connectproxy.matching.addresses import is_denied
from connectproxy.matching.netset import IPAddress, IPNetwork, NetworkSet
from connectproxy.wire.hostnames import normalise_hostname

__all__ = ["destinations"]

_DEFAULT = Destinations()


def destinations(check: Checker, value: Any, where: Where) -> Destinations:
    section = Section(check, value, where, ("deny_networks", "hosts"))
    deny = _DEFAULT.deny_networks
    deny_item = section.get("deny_networks")
    if deny_item is not None:  # replaces the default list entirely
        deny = networks(check, *deny_item)
        if not deny:
            check.warn(
                deny_item[1],
                "empty: tunnels may reach loopback, link-local and multicast addresses",
            )
    hosts_item = section.get("hosts")
    hosts = () if hosts_item is None else _hosts(check, *hosts_item, deny)
    return Destinations(deny, hosts)


def _hosts(
    check: Checker, value: Any, where: Where, deny: tuple[IPNetwork, ...]
) -> tuple[tuple[str, tuple[IPAddress, ...]], ...]:
    result: dict[str, tuple[IPAddress, ...]] = {}
    denied = NetworkSet(deny)  # once, not once per address
    for key, item, key_at in entries(check, value, where):
        at = where.index(f'"{key}"', key_at.line)
        if not isinstance(key, str):
            raise check.error(at, f"must be a host name, not {describe(key)}")
        try:
            name = normalise_hostname(key)
        except ValueError as error:
            raise check.error(at, f"{key!r} is not a host name: {error}") from None
        if name in result:
            raise check.error(at, f"{name!r} is listed twice (names are case-insensitive)")
        listed = [(item, at)] if isinstance(item, str) else items(check, item, at)
        if not listed:
            raise check.error(at, "needs at least one IP address")
        addresses = tuple(ip_address(check, address, a) for address, a in listed)
        for address in addresses:
            if is_denied(address, denied):
                check.warn(
                    at, f"{address} is in deny_networks, so tunnels to {name} will be refused"
                )
        result[name] = addresses
    return tuple(result.items())
