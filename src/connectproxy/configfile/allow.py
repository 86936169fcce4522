"""The destination rule sets: `allow` (the policy named `default`) and each entry of `policies`.

`policy_rules` is self-contained on purpose: an omitted key takes the built-in default of
model.py, never a value from elsewhere in the file (SPEC section 3.2), so the same check fits
`allow` and every `policies.NAME` mapping alike.
"""

from __future__ import annotations

import re
from typing import Any

from connectproxy.config.model import DEFAULT_POLICY, AllowMode, Policy, TLSMode
from connectproxy.configfile.checker import Checker, Section, entries, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.netvalues import domain_patterns, networks
from connectproxy.configfile.scalars import choice, integer

__all__ = ["ALLOW_KEYS", "POLICY_NAME_RULE", "allow_rules", "policies", "policy_rules"]

ALLOW_KEYS = ("ports", "domains", "networks", "mode", "tls")
_ALLOW_MODES: tuple[AllowMode, ...] = ("enforce", "report")
_TLS_MODES: tuple[TLSMode, ...] = ("off", "observe", "require", "verify_sni")
_DEFAULT = Policy()

# Policy names label metrics and the access log, and are written in lists of names: a plain
# character set keeps them unambiguous there (no spaces, quotes, commas or `=`).
_POLICY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
POLICY_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-'"


def allow_rules(check: Checker, value: Any, where: Where) -> Policy:
    """The `allow` section: the policy named `default`."""
    return policy_rules(check, value, where, DEFAULT_POLICY)


def policy_rules(check: Checker, value: Any, where: Where, name: str) -> Policy:
    """One policy's mapping; a null one (every key commented out) is all defaults."""
    section = Section(check, {} if value is None else value, where, ALLOW_KEYS)
    return Policy(
        name=name,
        ports=section.get_or("ports", _ports, _DEFAULT.ports),
        domains=section.get_or("domains", domain_patterns, ()),
        networks=section.get_or("networks", networks, ()),
        mode=section.get_or("mode", _allow_mode, _DEFAULT.mode),
        tls=section.get_or("tls", _tls_mode, _DEFAULT.tls),
    )


def policies(
    check: Checker, value: Any, where: Where
) -> tuple[dict[str, Policy], dict[str, Where]]:
    """The `policies` section: each named policy, and the place of each name (for warnings)."""
    found: dict[str, Policy] = {}
    places: dict[str, Where] = {}
    for key, item, at in entries(check, value, where):
        if key == DEFAULT_POLICY:
            raise check.error(
                at,
                "`default` is the `allow` section; write its ports, domains and networks under "
                "allow, and give a policy here another name",
            )
        if not isinstance(key, str) or not _POLICY_NAME.fullmatch(key):
            raise check.error(at, f"{str(key)!r} is not a policy name: use {POLICY_NAME_RULE}")
        found[key] = policy_rules(check, item, at, key)
        places[key] = at
    return found, places


def _ports(check: Checker, value: Any, where: Where) -> frozenset[int]:
    return frozenset(integer(check, item, at, 1, 65535) for item, at in items(check, value, where))


def _allow_mode(check: Checker, value: Any, where: Where) -> AllowMode:
    return choice(check, value, where, _ALLOW_MODES)


def _tls_mode(check: Checker, value: Any, where: Where) -> TLSMode:
    """The TLS guard's mode (SPEC section 5.1, policy/tlsguard.py)."""
    if value is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    return choice(check, value, where, _TLS_MODES)
