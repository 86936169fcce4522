"""Squid ACLs and the http_access lines that use them, read into values the translator can reason
about (docs/squid-migration.md).

An `acl` line adds values to a named ACL (Squid appends the values of every line of one name),
and an `http_access` line is an ordered list of ACL conditions, each possibly negated. Reading
them here turns Squid's text into sets (sets.py): networks for `src`/`dst`, domain patterns for
`dstdomain`, port numbers for `port`. A value that cannot become part of such a set is skipped
with a warning rather than guessed at; an ACL of a type connectproxy cannot evaluate is kept with
the type "other", so the rule algebra can say what happens to the lines using it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from connectproxy.configfile.squid.parse import Directive
from connectproxy.configfile.squid.report import Report, refuse
from connectproxy.configfile.squid.sets import ANYWHERE, collapse, unique_patterns
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPNetwork

__all__ = ["Acl", "AclType", "Acls", "Condition", "Rule"]

AclType = Literal["src", "dst", "dstdomain", "port", "method", "proxy_auth", "manager", "other"]

# Squid's predefined ACLs (squid.conf.documented: "ACLs all, manager, localhost, to_localhost,
# and CONNECT are predefined").
_LOCALHOST = (ipaddress.IPv4Network("127.0.0.1/32"), ipaddress.IPv6Network("::1/128"))
_TO_LOCALHOST = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("0.0.0.0/32"),
    ipaddress.IPv6Network("::1/128"),
    ipaddress.IPv6Network("::/128"),
)


@dataclass(frozen=True)
class Acl:
    """An ACL with the values of all its `acl` lines (Squid appends lines of one name)."""

    name: str
    type: AclType
    squid_type: str
    networks: tuple[IPNetwork, ...] = ()  # src, dst
    domains: tuple[DomainPattern, ...] = ()  # dstdomain
    ports: frozenset[int] = frozenset()  # port
    methods: frozenset[str] = frozenset()  # method
    users: frozenset[str] | None = frozenset()  # proxy_auth; None for REQUIRED (any user)
    defined_at: tuple[int, str] | None = None  # (directive index, FILE:LINE); None if built in


_BUILTIN_ACLS = (
    Acl("all", "src", "src", networks=ANYWHERE),
    Acl("localhost", "src", "src", networks=_LOCALHOST),
    Acl("to_localhost", "dst", "dst", networks=_TO_LOCALHOST),
    Acl("manager", "manager", "url_regex"),
    Acl("CONNECT", "method", "method", methods=frozenset({"CONNECT"})),
)

_SUPPORTED_TYPES: dict[str, AclType] = {
    "src": "src",
    "dst": "dst",
    "dstdomain": "dstdomain",
    "port": "port",
    "method": "method",
    "proxy_auth": "proxy_auth",
}


@dataclass(frozen=True)
class Condition:
    """One word of an http_access line: an ACL that must match, or with `!` must not."""

    acl: Acl
    negated: bool

    @property
    def text(self) -> str:
        return f"!{self.acl.name}" if self.negated else self.acl.name


@dataclass(frozen=True)
class Rule:
    """One `http_access` line; `index` orders warnings by where the directive appeared."""

    allow: bool
    conditions: tuple[Condition, ...]
    directive: Directive
    index: int
    implicit: bool = False

    @property
    def text(self) -> str:
        """How warnings quote the line: as written, so the operator can search for it."""
        if self.implicit:
            return "Squid's implicit final `http_access allow all`"
        words = ["allow" if self.allow else "deny", *(c.text for c in self.conditions)]
        return "`http_access " + " ".join(words) + "`"


class Acls:
    """The ACLs defined so far, by name: an http_access line may only use those above it."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.by_name: dict[str, Acl] = {acl.name: acl for acl in _BUILTIN_ACLS}

    def define(self, index: int, d: Directive) -> None:
        """An `acl NAME TYPE [flags] VALUE...` line."""
        if len(d.args) < 2:
            raise refuse(d, "acl needs a name and a type, as in `acl sensors src 10.1.0.0/16`")
        name, squid_type, *rest = d.args
        if name == "manager":
            # Old configs define it; Squid 4+ keeps its built-in and says to remove the line.
            self.report.warn(index, d.where, "acl manager is built in: this definition is ignored")
            return
        values = self.without_flags(index, d, rest)
        acl_type = _SUPPORTED_TYPES.get(squid_type, "other")
        previous = self.by_name.get(name)
        if previous is not None and previous.squid_type != squid_type:
            raise refuse(
                d, f"acl {name} is already defined with type {previous.squid_type} (Squid refuses)"
            )
        acl = previous or Acl(name, acl_type, squid_type, defined_at=(index, d.where))
        match acl_type:
            case "src" | "dst":
                nets = self.address_values(index, d, values)
                acl = replace(acl, networks=collapse((*acl.networks, *nets)))
            case "dstdomain":
                domains = self.domain_values(index, d, values)
                acl = replace(acl, domains=unique_patterns((*acl.domains, *domains)))
            case "port":
                acl = replace(acl, ports=acl.ports | self.port_values(index, d, values))
            case "method":
                acl = replace(acl, methods=acl.methods | {v.upper() for v in values})
            case "proxy_auth":
                if acl.users is None or "REQUIRED" in values:
                    acl = replace(acl, users=None)
                else:
                    acl = replace(acl, users=acl.users | frozenset(values))
            case _:
                self.report.warn(
                    index,
                    d.where,
                    f"acl {name}: type {squid_type} is not supported; "
                    "http_access lines that use it are handled as reported below",
                )
        self.by_name[name] = acl

    def rule(self, index: int, d: Directive) -> Rule | None:
        """An `http_access allow|deny [!]ACL...` line; None for one Squid skips."""
        if not d.args or d.args[0] not in ("allow", "deny"):
            raise refuse(d, "http_access must be followed by allow or deny")
        if len(d.args) == 1:
            self.report.warn(
                index, d.where, "http_access line without ACLs skipped (as Squid does)"
            )
            return None
        conditions = []
        for word in d.args[1:]:
            negated = word.startswith("!")
            name = word[1:] if negated else word
            acl = self.by_name.get(name)
            if acl is None:
                raise refuse(d, f"http_access uses acl {name!r}, which is not defined above")
            conditions.append(Condition(acl, negated))
        return Rule(d.args[0] == "allow", tuple(conditions), d, index)

    def note_unused_sources(self, rules: Iterable[Rule]) -> None:
        """A src acl no http_access line uses admits nobody, in Squid as here. Saying so
        explains, for example, why Debian's stock `localnet` is not a client."""
        used = {c.acl.name for rule in rules for c in rule.conditions}
        for acl in self.by_name.values():
            if acl.type == "src" and acl.defined_at is not None and acl.name not in used:
                index, where = acl.defined_at
                self.report.warn(
                    index,
                    where,
                    f"acl {acl.name} is not used by any http_access line, so its addresses are "
                    "not admitted (as in Squid)",
                )

    # --- values ---

    def without_flags(self, index: int, d: Directive, words: list[str]) -> list[str]:
        """Drop Squid's ACL flags: -i/+i (case) and -n (no DNS) change nothing here."""
        position = 0
        while position < len(words) and words[position][:1] in ("-", "+"):
            flag = words[position]
            position += 1
            if flag == "--":
                break
            if flag not in ("-i", "+i", "-n"):
                self.report.warn(index, d.where, f"acl flag {flag} ignored")
        return words[position:]

    def address_values(self, index: int, d: Directive, values: list[str]) -> list[IPNetwork]:
        nets: list[IPNetwork] = []
        for value in values:
            try:
                nets.extend(_address_value(value))
            except ValueError as error:
                self.report.warn(index, d.where, f"acl value {value!r} skipped: {error}")
        return nets

    def domain_values(self, index: int, d: Directive, values: list[str]) -> list[DomainPattern]:
        patterns = []
        for value in values:
            try:
                ipaddress.ip_address(value.strip("[]"))
            except ValueError:
                pass
            else:
                self.report.warn(
                    index,
                    d.where,
                    f"dstdomain value {value!r} skipped: connectproxy refuses IP-address targets "
                    "unless allow.networks lists them",
                )
                continue
            if value.endswith("."):
                # Squid compares dstdomain values literally: one written with a trailing dot
                # never matches, so allowing the undotted name would widen access.
                self.report.warn(
                    index,
                    d.where,
                    f"dstdomain value {value!r} skipped: Squid never matches a value ending in "
                    "'.'; write it without the dot to allow it",
                )
                continue
            try:
                if value.startswith("*"):
                    raise ValueError("Squid has no wildcards in dstdomain")
                pattern = parse_domain_pattern(value)
            except ValueError as error:
                self.report.warn(index, d.where, f"dstdomain value {value!r} skipped: {error}")
                continue
            text = "." + pattern.domain if pattern.kind == "suffix" else pattern.domain
            patterns.append(DomainPattern(text=text, kind=pattern.kind, domain=pattern.domain))
        return patterns

    def port_values(self, index: int, d: Directive, values: list[str]) -> frozenset[int]:
        ports: set[int] = set()
        for value in values:
            low_text, _, high_text = value.partition("-")
            high_text = high_text or low_text
            if not (low_text.isdigit() and high_text.isdigit()):
                self.report.warn(
                    index, d.where, f"port value {value!r} skipped: not a port or range"
                )
                continue
            low, high = int(low_text), int(high_text)
            if not 1 <= low <= high <= 65535:
                self.report.warn(index, d.where, f"port value {value!r} skipped: outside 1-65535")
                continue
            ports.update(range(low, high + 1))
        return frozenset(ports)


def _address_value(value: str) -> list[IPNetwork]:
    """One src/dst value: `all`, an address, `addr/prefix`, `addr/mask`, `a-b` or `a-b/mask`."""
    if value == "all":
        return list(ANYWHERE)
    text, _, mask = value.partition("/")
    if "-" in text:
        low_text, _, high_text = text.partition("-")
        low = ipaddress.ip_address(low_text)
        high = ipaddress.ip_address(high_text)
        if low.version != high.version or int(low) > int(high):
            raise ValueError("not an address range low-high")
        prefix = ipaddress.ip_network(f"{low}/{mask}", strict=False).prefixlen if mask else None
        return _range_networks(int(low), int(high), low.version, prefix)
    try:
        return [ipaddress.ip_network(value, strict=False)]
    except ValueError:
        raise ValueError(
            "not an IP address, network or range (Squid would resolve a host name once at "
            "start-up; write its address instead)"
        ) from None


def _range_networks(low: int, high: int, version: int, prefix: int | None) -> list[IPNetwork]:
    """Squid's `a-b/mask` matches an address whose masked value lies between a and b."""
    bits = 32 if version == 4 else 128
    if prefix is not None:
        block = 1 << (bits - prefix)
        low = -(-low // block) * block
        high = (high // block) * block + block - 1
        if low > high:
            return []
    if version == 4:
        first4, last4 = ipaddress.IPv4Address(low), ipaddress.IPv4Address(high)
        return list(ipaddress.summarize_address_range(first4, last4))
    first6, last6 = ipaddress.IPv6Address(low), ipaddress.IPv6Address(high)
    return list(ipaddress.summarize_address_range(first6, last6))
