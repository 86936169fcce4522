"""The `allow` section: which destinations (ports, domains, IP networks) admitted clients reach.

`allow_rules` is self-contained on purpose: an omitted key takes the built-in default of
config.py, never a value from elsewhere in the file, so the same check fits any mapping written
with these keys, wherever in the file it appears.
"""

from __future__ import annotations

from typing import Any

from connectproxy.config.model import Allow, AllowMode
from connectproxy.configfile.checker import Checker, Section, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.netvalues import domain_patterns, networks
from connectproxy.configfile.scalars import choice, integer

__all__ = ["ALLOW_KEYS", "allow_rules"]

ALLOW_KEYS = ("ports", "domains", "networks", "mode")
_ALLOW_MODES: tuple[AllowMode, ...] = ("enforce", "report")
_DEFAULT = Allow()


def allow_rules(check: Checker, value: Any, where: Where) -> Allow:
    section = Section(check, value, where, ALLOW_KEYS)
    return Allow(
        ports=section.get_or("ports", _ports, _DEFAULT.ports),
        domains=section.get_or("domains", domain_patterns, ()),
        networks=section.get_or("networks", networks, ()),
        mode=section.get_or("mode", _allow_mode, _DEFAULT.mode),
    )


def _ports(check: Checker, value: Any, where: Where) -> frozenset[int]:
    return frozenset(integer(check, item, at, 1, 65535) for item, at in items(check, value, where))


def _allow_mode(check: Checker, value: Any, where: Where) -> AllowMode:
    return choice(check, value, where, _ALLOW_MODES)
