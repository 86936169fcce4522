"""Translating a squid.conf into connectproxy's configuration (SPEC section 9).

Squid and connectproxy decide differently. Squid walks its `http_access` lines top to bottom and
the first line whose ACLs all match answers. connectproxy has one fixed shape (SPEC section 3):
a client is *admitted* (by source network or by password), and then the destination must be in
*one allowlist* of ports and domains shared by every admitted client. Wherever that shape cannot
say what Squid says, the translation is made *stricter* when it can and reports a warning
"FILE:LINE: message" in every case; it never widens access silently.

This module runs one translation and writes its result; the work is done by the modules it calls,
each with one job:

- directives.py: listeners, authentication, timeouts, and the directives that are ignored;
- upstream.py: `cache_peer` parents and `never_direct`;
- acls.py: `acl` lines and the `http_access` lines that use them;
- below, in this module for now: the rule algebra (what each allow line lets through after the
  deny lines above it), and the clients and the one allowlist those allow lines add up to;
- sets.py: the set algebra on networks, domain patterns and ports the other modules share;
- report.py: the warnings, in squid.conf order, and the error that stops a translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from connectproxy.config.model import DEFAULT_DENY_NETWORKS
from connectproxy.configfile.squid.acls import Acls, Condition, Rule
from connectproxy.configfile.squid.directives import Settings
from connectproxy.configfile.squid.parse import Directive, SquidConfError, read_squid_conf
from connectproxy.configfile.squid.report import Report, SquidImportError
from connectproxy.configfile.squid.sets import (
    ALL_PORTS,
    ANYWHERE,
    collapse,
    complement,
    covers,
    intersect,
    intersect_patterns,
    ipv4_mapped,
    net_text,
    subtract,
    unique_patterns,
)
from connectproxy.configfile.squid.upstream import Peers
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPNetwork

__all__ = ["DEFENDER_ALLOWLIST", "Translation", "translate", "translate_file"]

# Squid's listening port when squid.conf has no http_port.
_DEFAULT_LISTEN_PORT = 3128


@dataclass(frozen=True)
class Translation:
    """The translated configuration and every way it differs from what Squid did."""

    mapping: dict[str, Any]
    warnings: tuple[str, ...]
    source: str = ""

    def to_yaml(self) -> str:
        """The configuration file an operator reviews and keeps, warnings included as comments."""
        lines = [
            f"# connectproxy configuration translated from {self.source or 'squid.conf'}",
            "# by `connectproxy import-squid`. Squid answers with the first matching http_access",
            "# line; connectproxy admits clients and checks one allowlist, so this translation",
            "# can be stricter than Squid. Every difference found is listed below: review them.",
            "#",
        ]
        if self.warnings:
            lines.append("# Warnings:")
            lines.extend(f"#   {warning}" for warning in self.warnings)
        else:
            lines.append("# No differences from Squid were found.")
        lines.append("")
        body = yaml.safe_dump(self.mapping, sort_keys=False, default_flow_style=False, width=100)
        return "\n".join(lines) + "\n" + body


def translate_file(path: Path) -> Translation:
    """Read `path` (and its includes) and translate it: the one entry point for the CLI."""
    try:
        directives = read_squid_conf(path)
    except SquidConfError as error:
        raise SquidImportError(str(error)) from None
    return translate(directives, str(path))


def translate(directives: Sequence[Directive], source: str) -> Translation:
    """Translate directives as `read_squid_conf` returns them; `source` names the main file."""
    return _Translator(source).run(directives)


class _Translator:
    """One translation run: reads every directive, then reasons about the http_access lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.report = Report()
        self.settings = Settings(self.report)
        self.peers = Peers(self.report)
        self.acls = Acls(self.report)
        self.rules: list[Rule] = []
        # The last directive read: where Squid's built-in defaults take over.
        self.end: tuple[int, str] = (0, f"{source}:1")

    def run(self, directives: Sequence[Directive]) -> Translation:
        for index, directive in enumerate(directives):
            self.directive(index, directive)
            self.end = (index, directive.where)
        self.settings.report_ignored()
        mapping = self.build()
        return Translation(mapping=mapping, warnings=self.report.warnings(), source=self.source)

    def directive(self, index: int, d: Directive) -> None:
        match d.name:
            case "acl":
                self.acls.define(index, d)
            case "http_access":
                rule = self.acls.rule(index, d)
                if rule is not None:
                    self.rules.append(rule)
            case "cache_peer":
                self.peers.cache_peer(index, d)
            case "never_direct":
                self.peers.never_direct.append((index, d))
            case _:
                self.settings.read(index, d)

    def build(self) -> dict[str, Any]:
        """The configuration mapping, in the order of the keys of SPEC section 3."""
        settings = self.settings
        if settings.saw_http_port and not settings.listen:
            raise SquidImportError(
                f"{self.source}: no http_port can be translated (see the warnings); "
                "connectproxy needs at least one forward-proxy listener"
            )
        mapping: dict[str, Any] = {}
        mapping["listen"] = settings.listen or [f"0.0.0.0:{_DEFAULT_LISTEN_PORT}"]
        evaluation = evaluate(self.rules, self.end, self.report)
        self.acls.note_unused_sources(self.rules)
        mapping.update(access(evaluation.terms, self.rules, settings.htpasswd, self.report))
        if evaluation.denied_networks:
            # Setting the key replaces the defaults, so they are written out first (without
            # their IPv4-mapped forms: connectproxy checks a mapped address as IPv4 anyway).
            defaults = [n for n in DEFAULT_DENY_NETWORKS if not ipv4_mapped(n)]
            denied = (*defaults, *collapse(evaluation.denied_networks))
            mapping["destinations"] = {"deny_networks": [net_text(n) for n in denied]}
        upstream = self.peers.upstream()
        if upstream is not None:
            mapping["upstream"] = upstream
        if settings.timeouts:
            mapping["timeouts"] = {k: _number(v) for k, v in settings.timeouts.items()}
        return mapping


def _number(value: float) -> int | float:
    """30.0 seconds is written `30`, as an operator would write it."""
    return int(value) if value.is_integer() else value


# --- http_access lines: the rule algebra ---------------------------------------------------


@dataclass(frozen=True)
class Users:
    """Who must authenticate: `names` None means any user the password file accepts."""

    names: frozenset[str] | None

    def intersect(self, other: Users) -> Users:
        if self.names is None:
            return other
        if other.names is None:
            return self
        return Users(self.names & other.names)

    def includes(self, other: Users) -> bool:
        if self.names is None:
            return True
        return other.names is not None and other.names <= self.names


@dataclass(frozen=True)
class Match:
    """The CONNECT requests an http_access line matches; a field left None means "any".

    `domains` is where the host must be, `except_domains` where it must not be. `users` with
    `users_negated` (only in a deny line: `deny !auth`) matches requests *without* such a user.
    """

    sources: tuple[IPNetwork, ...] | None = None
    users: Users | None = None
    users_negated: bool = False
    domains: tuple[DomainPattern, ...] | None = None
    except_domains: tuple[DomainPattern, ...] = ()
    ports: frozenset[int] | None = None
    # Destination networks: matched in a deny line, excluded (`!acl`) in an allow line.
    destinations: tuple[IPNetwork, ...] = ()

    def dimensions(self) -> list[str]:
        """The request properties this match constrains, in the order a deny is best applied."""
        found = []
        if self.ports is not None:
            found.append("ports")
        if self.domains is not None or self.except_domains:
            found.append("domains")
        if self.sources is not None:
            found.append("sources")
        if self.users is not None:
            found.append("users")
        return found


@dataclass(frozen=True)
class Term:
    """An allow line as connectproxy will apply it: who it admits and what it allows."""

    rule: Rule
    match: Match
    client: str  # the client name, for a line that admits by source address


@dataclass(frozen=True)
class Evaluation:
    """What the http_access lines come to: the allow terms, in squid.conf order, and the
    destination networks refused to every client beyond connectproxy's default deny_networks."""

    terms: tuple[Term, ...]
    denied_networks: tuple[IPNetwork, ...]


def evaluate(rules: Sequence[Rule], end: tuple[int, str], report: Report) -> Evaluation:
    """Walk the http_access lines as Squid does; `end` (directive index, FILE:LINE) is the last
    directive read, where a warning about the absence of any line is placed."""
    walk = _Walk(rules, report)
    terms = walk.terms(end)
    return Evaluation(tuple(terms), tuple(walk.denied_networks))


def connect_ports_rule(rules: Sequence[Rule]) -> tuple[Rule, frozenset[int]] | None:
    """The `deny CONNECT !SSL_ports` line (whatever the port acl's name) and its ports."""
    for rule in rules:
        if rule.allow or len(rule.conditions) != 2:
            continue
        method = [c for c in rule.conditions if c.acl.type == "method" and not c.negated]
        port = [c for c in rule.conditions if c.acl.type == "port" and c.negated]
        if method and port and "CONNECT" in method[0].acl.methods:
            return rule, port[0].acl.ports
    return None


class _Walk:
    """One top-to-bottom pass over the http_access lines."""

    def __init__(self, rules: Sequence[Rule], report: Report) -> None:
        self.rules = rules
        self.report = report
        self.denied_networks: list[IPNetwork] = []

    def terms(self, end: tuple[int, str]) -> list[Term]:
        """The allow lines as connectproxy applies them, each narrowed by the denies above it."""
        terms: list[Term] = []
        denies: list[tuple[Rule, Match]] = []
        rules = list(self.rules)
        if rules and not rules[-1].allow:
            # Squid: when no line matches, the answer is the opposite of the last line's.
            last = rules[-1]
            rules.append(replace(last, allow=True, conditions=(), implicit=True))
        elif not rules:
            index, where = end
            self.report.warn(
                index,
                where,
                "no http_access lines: Squid refuses every request, so no client is admitted",
            )
        for position, rule in enumerate(rules):
            match = self.match_of(rule)
            if match is None:
                continue
            if rule.allow:
                if rule.implicit:
                    self.report.warn_line(
                        rule,
                        "the last http_access line is a deny, so Squid allows every request no "
                        "line matched; translated as an allow line for every client",
                    )
                term = self.apply_denies(rule, match, denies)
                if term is not None:
                    terms.append(term)
                if not match.dimensions():  # `allow all`
                    self.note_unreachable(rule, rules[position + 1 :])
                    return terms
            elif match.destinations:
                self.deny_destinations(rule, match)
            elif not match.dimensions():  # `deny all`
                self.note_unreachable(rule, rules[position + 1 :])
                return terms
            else:
                denies.append((rule, match))
        return terms

    def note_unreachable(self, final: Rule, later: list[Rule]) -> None:
        """Lines after `deny all` do nothing, in Squid as here; sensors appended at the end of
        squid.conf are a classic mistake worth pointing at."""
        for rule in later:
            if not rule.implicit:
                self.report.warn_line(
                    rule,
                    f"never reached: {final.text} at {final.directive.where} answers every "
                    "request before it (as in Squid)",
                )

    def match_of(self, rule: Rule) -> Match | None:
        """The CONNECT requests `rule` matches, or None if it can never match one.

        A condition connectproxy cannot evaluate makes an allow line match nothing (stricter)
        and a deny line be skipped (reported as wider than Squid).
        """
        match = Match()
        for condition in rule.conditions:
            acl, negated = condition.acl, condition.negated
            if acl.type == "src":
                nets = complement(acl.networks) if negated else acl.networks
                if nets == ANYWHERE:
                    continue  # `all`: always true
                joined = nets if match.sources is None else intersect(match.sources, nets)
                match = replace(match, sources=joined)
            elif acl.type == "method":
                if ("CONNECT" in acl.methods) == negated:
                    return None
            elif acl.type == "manager":
                if not negated:
                    return None  # cache manager requests are never CONNECT
            elif acl.type == "port":
                ports = ALL_PORTS - acl.ports if negated else acl.ports
                joined_ports = ports if match.ports is None else match.ports & ports
                match = replace(match, ports=joined_ports)
            elif acl.type == "dstdomain":
                if negated:
                    excluded = (*match.except_domains, *acl.domains)
                    match = replace(match, except_domains=excluded)
                else:
                    patterns = acl.domains
                    if match.domains is not None:
                        patterns = intersect_patterns(match.domains, patterns)
                    match = replace(match, domains=patterns)
            elif acl.type == "proxy_auth" and rule.allow and not negated:
                users = Users(acl.users)
                joined_users = users if match.users is None else match.users.intersect(users)
                match = replace(match, users=joined_users)
            elif acl.type == "proxy_auth" and not rule.allow and negated and match.users is None:
                # `deny !auth`: refuses whoever is not (one of) these users.
                match = replace(match, users=Users(acl.users), users_negated=True)
            elif acl.type == "dst" and negated == rule.allow:
                # `deny dst_acl` or `allow ... !dst_acl`: becomes destinations.deny_networks.
                match = replace(match, destinations=(*match.destinations, *acl.networks))
            else:
                self.unsupported(rule, condition)
                return None
        if match.sources == () or match.ports == frozenset() or match.domains == ():
            return None
        if rule.allow and match.destinations:
            self.refuse_destinations(rule, match.destinations)
            match = replace(match, destinations=())
        return match

    def unsupported(self, rule: Rule, condition: Condition) -> None:
        what = f"{condition.text} (acl type {condition.acl.squid_type})"
        if rule.allow:
            self.report.warn_line(
                rule,
                f"line ignored: connectproxy cannot evaluate {what} here, so nothing is "
                "allowed through this line (stricter than Squid)",
            )
        else:
            self.report.warn_line(
                rule,
                f"line NOT enforced: connectproxy cannot evaluate {what} here; requests Squid "
                "refused with it may be let through (the allowlist still applies)",
            )

    def refuse_destinations(self, rule: Rule, networks: tuple[IPNetwork, ...]) -> None:
        """`allow ... !dst_acl`: those destinations are refused for every client instead."""
        extra = subtract(collapse(networks), DEFAULT_DENY_NETWORKS)
        if extra:
            self.denied_networks.extend(extra)
            self.report.warn_line(
                rule,
                "destination networks "
                + ", ".join(net_text(n) for n in extra)
                + " are added to destinations.deny_networks, for every client",
            )

    def deny_destinations(self, rule: Rule, match: Match) -> None:
        """`deny ... dst_acl` (e.g. to_localhost) becomes destinations.deny_networks."""
        extra = subtract(collapse(match.destinations), DEFAULT_DENY_NETWORKS)
        if not extra:
            return  # already refused by connectproxy's default deny_networks
        self.denied_networks.extend(extra)
        if match.dimensions():
            scope = "Squid refused them only for the requests this line matches"
        elif any(r.allow and r.index < rule.index for r in self.rules):
            scope = "also for the allow lines above this one, which Squid let reach them"
        else:
            return  # exactly what Squid does
        networks = ", ".join(net_text(n) for n in extra)
        self.report.warn_line(
            rule,
            f"destination networks {networks} are added to destinations.deny_networks and "
            f"refused for every client ({scope})",
        )

    def apply_denies(
        self, rule: Rule, match: Match, denies: list[tuple[Rule, Match]]
    ) -> Term | None:
        """Take away from an allow line what the deny lines above it refuse."""
        for deny, refused in denies:
            if _disjoint(match, refused):
                continue
            # A deny with no conditions ended the walk in terms(), so there is one at least.
            dimensions = refused.dimensions()
            dimension = dimensions[0]
            if len(dimensions) > 1:
                self.report.warn_line(
                    deny,
                    f"refuses only requests matching all its acls, which connectproxy cannot "
                    f"express; for {rule.text} it refuses every request with those {dimension} "
                    "(stricter than Squid)",
                )
            narrowed = _subtract_dimension(match, refused, dimension)
            if narrowed is None:
                return None
            match = narrowed
        return Term(rule, match, _client_name(rule))


def _client_name(rule: Rule) -> str:
    """Named after the line's src acls (`sensor1`, `localnet`), `any` when it has none."""
    parts = [
        ("not-" if c.negated else "") + c.acl.name
        for c in rule.conditions
        if c.acl.type == "src" and c.acl.networks != ANYWHERE
    ]
    return "-".join(parts) if parts else "any"


def _disjoint(allowed: Match, refused: Match) -> bool:
    """True when no request matches both: the deny line cannot affect the allow line."""
    sources_apart = allowed.sources is not None and refused.sources is not None
    if sources_apart and not intersect(allowed.sources or (), refused.sources or ()):
        return True
    if (
        allowed.ports is not None
        and refused.ports is not None
        and not allowed.ports & refused.ports
    ):
        return True
    if allowed.domains is not None:
        if refused.domains is not None and not any(
            covers(a, r) or covers(r, a) for a in allowed.domains for r in refused.domains
        ):
            return True
        if refused.except_domains and all(
            any(covers(e, a) for e in refused.except_domains) for a in allowed.domains
        ):
            return True
    if refused.users is not None and refused.users_negated and allowed.users is not None:
        return refused.users.includes(allowed.users)
    return False


def _subtract_dimension(allowed: Match, refused: Match, dimension: str) -> Match | None:
    """`allowed` minus every request with `refused`'s value of one dimension (None: nothing left).

    When `refused` constrains only this dimension the result is exact; otherwise it is stricter
    than Squid, which the caller reports.
    """
    if dimension == "ports":
        assert refused.ports is not None
        ports = (allowed.ports if allowed.ports is not None else ALL_PORTS) - refused.ports
        return replace(allowed, ports=ports) if ports else None
    if dimension == "sources":
        assert refused.sources is not None
        sources = subtract(
            allowed.sources if allowed.sources is not None else ANYWHERE, refused.sources
        )
        return replace(allowed, sources=sources) if sources else None
    if dimension == "users":
        assert refused.users is not None
        users = refused.users if allowed.users is None else allowed.users.intersect(refused.users)
        if users.names is not None and not users.names:
            return None
        return replace(allowed, users=users)
    # domains: `deny !acl` keeps only the acl's hosts; `deny acl` takes its hosts away.
    if refused.except_domains and refused.domains is None:
        kept = refused.except_domains
        if allowed.domains is not None:
            kept = intersect_patterns(allowed.domains, kept)
        return replace(allowed, domains=kept) if kept else None
    assert refused.domains is not None
    if allowed.domains is None:
        return replace(allowed, except_domains=(*allowed.except_domains, *refused.domains))
    remaining = tuple(a for a in allowed.domains if not any(covers(r, a) for r in refused.domains))
    inside = tuple(
        r for r in refused.domains for a in remaining if covers(a, r) and not covers(r, a)
    )
    if not remaining:
        return None
    return replace(allowed, domains=remaining, except_domains=(*allowed.except_domains, *inside))


# --- the clients and the allowlist ------------------------------------------------------------

# SPEC section 3.1: what a Defender for IoT sensor needs to reach.
DEFENDER_ALLOWLIST = (
    ".azure-devices.net",
    ".blob.core.windows.net",
    ".servicebus.windows.net",
    "download.microsoft.com",
)

# The port sensors tunnel to, and allow.ports when squid.conf does not say.
_TLS_PORT = 443
# allow.ports is written out port by port; beyond this many it stops being a readable policy.
_MAX_LISTED_PORTS = 1024


def access(
    terms: Sequence[Term],
    rules: Sequence[Rule],
    htpasswd: tuple[int, Directive, Path] | None,
    report: Report,
) -> dict[str, Any]:
    """The keys that say who may go where: `allow`, `clients` and, when an allow line needs a
    password, `htpasswd_file`. `htpasswd` is the translated `auth_param basic program` line
    (directive index, directive, password file), or None."""
    password_file = htpasswd[2] if htpasswd is not None else None
    clients, use_htpasswd = _admission(terms, password_file, report)
    domains, ports = _allowlist(terms, rules, report)
    mapping: dict[str, Any] = {
        "allow": {"ports": sorted(ports), "domains": [p.text for p in domains]},
        "clients": clients,
    }
    if use_htpasswd and htpasswd is not None:
        mapping["htpasswd_file"] = str(htpasswd[2])
    elif htpasswd is not None:
        index, d, _ = htpasswd
        report.warn(
            index,
            d.where,
            "no http_access allow line uses a proxy_auth acl, so the password file is unused",
        )
    return mapping


# --- admission --------------------------------------------------------------------------------


def _admission(
    terms: Sequence[Term], password_file: Path | None, report: Report
) -> tuple[list[dict[str, Any]], bool]:
    """`clients` from the lines that admit by address; whether the htpasswd file is needed."""
    networks: dict[str, list[IPNetwork]] = {}
    use_htpasswd = False
    for term in terms:
        match, rule = term.match, term.rule
        if match.users is not None:
            use_htpasswd = _password_admission(term, password_file, report) or use_htpasswd
            continue
        sources = ANYWHERE if match.sources is None else match.sources
        networks.setdefault(term.client, []).extend(sources)
        everyone = " and ".join(net_text(n) for n in sources if n.prefixlen == 0)
        if everyone:
            because = "this line has no src acl, so" if term.client == "any" else "its src acl:"
            report.warn_line(
                rule,
                f"{because} ANY source address is admitted without a password (client "
                f"{term.client!r}: {everyone}); restrict it to your sensors' networks",
            )
    clients = [
        {"name": name, "networks": [net_text(n) for n in collapse(nets)]}
        for name, nets in networks.items()
    ]
    return clients, use_htpasswd


def _password_admission(term: Term, password_file: Path | None, report: Report) -> bool:
    """A proxy_auth line admits the users of the htpasswd file; say what that loses."""
    match, rule = term.match, term.rule
    if password_file is None:
        report.warn_line(
            rule,
            "needs a password, but there is no `auth_param basic program basic_ncsa_auth "
            "FILE` to translate: nobody is admitted by password (stricter than Squid)",
        )
        return False
    if match.users is not None and match.users.names is not None:
        names = ", ".join(sorted(match.users.names))
        report.warn_line(
            rule,
            f"Squid admitted only the users {names}; connectproxy admits every user in "
            f"{password_file}: remove the others from that file",
        )
    if match.sources is not None:
        report.warn_line(
            rule,
            f"Squid admitted these users only from {term.client}; connectproxy admits "
            f"users of {password_file} from any address",
        )
    return True


# --- the allowlist ----------------------------------------------------------------------------


def _allowlist(
    terms: Sequence[Term], rules: Sequence[Rule], report: Report
) -> tuple[list[DomainPattern], frozenset[int]]:
    """allow.domains and allow.ports, with every way they differ from Squid reported."""
    named = unique_patterns(p for t in terms if t.match.domains for p in t.match.domains)
    open_terms = [t for t in terms if t.match.domains is None]
    if named:
        for term in open_terms:
            report.warn_line(
                term.rule,
                "Squid lets this line reach any host; connectproxy limits it to allow.domains "
                "(the dstdomain acls of the other allow lines)",
            )
        domains = list(named)
    else:
        for term in open_terms:
            report.warn_line(
                term.rule,
                "Squid lets this line reach any host; no allow line names a dstdomain acl, "
                "so allow.domains is the Defender for IoT allowlist: "
                + ", ".join(DEFENDER_ALLOWLIST),
            )
        domains = [parse_domain_pattern(text) for text in DEFENDER_ALLOWLIST]
    domains = _apply_exceptions(terms, domains, report)
    if not domains and terms:
        report.warn_line(terms[0].rule, "allow.domains ends up empty: no host is reachable")
    ports = frozenset(p for term in terms for p in _term_ports(term, rules, report))
    if not terms:
        ports = frozenset({_TLS_PORT})
    _plain_http_note(terms, report)
    _check_widening(terms, domains, ports, report)
    return domains, ports


def _apply_exceptions(
    terms: Sequence[Term], domains: list[DomainPattern], report: Report
) -> list[DomainPattern]:
    """Hosts a line excludes: drop allowlist entries they cover, report the rest."""
    kept = list(domains)
    for term in terms:
        for excluded in term.match.except_domains:
            for allowed in list(kept):
                if covers(excluded, allowed):
                    kept.remove(allowed)
                    report.warn_line(
                        term.rule,
                        f"{allowed.text} is refused for this line, so it is removed from "
                        "allow.domains for every client",
                    )
                elif covers(allowed, excluded):
                    report.warn_line(
                        term.rule,
                        f"Squid refuses {excluded.text} for this line, but connectproxy "
                        f"cannot make an exception inside {allowed.text}: those hosts "
                        "are reachable (wider than Squid)",
                    )
    return kept


def _term_ports(term: Term, rules: Sequence[Rule], report: Report) -> frozenset[int]:
    """The ports a line allows, narrowed to what allow.ports can reasonably list."""
    ports = term.match.ports
    connect_rule = connect_ports_rule(rules)
    narrowed = connect_rule[1] if connect_rule is not None else frozenset({_TLS_PORT})
    shown = ", ".join(str(p) for p in sorted(narrowed)[:20])
    if ports is None:
        if connect_rule is not None:
            report.warn_line(
                term.rule,
                f"this line comes before {connect_rule[0].text} "
                f"({connect_rule[0].directive.where}), so Squid tunnels to ANY port for it; "
                f"connectproxy allows only ports {shown}",
            )
        else:
            report.warn_line(
                term.rule,
                "no `http_access deny CONNECT !SSL_ports` line limits the ports, so Squid "
                f"tunnels to ANY port for this line; connectproxy allows only port {shown}",
            )
        return narrowed
    if len(ports) > _MAX_LISTED_PORTS:
        kept = ports & narrowed
        if not kept:
            raise SquidImportError(
                f"{term.rule.directive.where}: {term.rule.text} allows {len(ports)} ports "
                "and none of them is a TLS port; list the ports sensors need in a port acl"
            )
        report.warn_line(
            term.rule,
            f"Squid allows {len(ports)} ports here; connectproxy lists only "
            f"{', '.join(str(p) for p in sorted(kept))}",
        )
        return kept
    return ports


def _plain_http_note(terms: Sequence[Term], report: Report) -> None:
    """Squid forwards plain HTTP for a line not limited to CONNECT; say it once."""
    for term in terms:
        limited = any(
            c.acl.type == "method" and not c.negated and c.acl.methods == {"CONNECT"}
            for c in term.rule.conditions
        )
        if not limited:
            report.warn_line(
                term.rule,
                "Squid also forwards plain-HTTP requests (GET http://...) this line allows; "
                "connectproxy only tunnels CONNECT and answers 405 to anything else",
            )
            return


def _check_widening(
    terms: Sequence[Term], domains: list[DomainPattern], ports: frozenset[int], report: Report
) -> None:
    """One allowlist for everyone: report clients that now reach more than in Squid."""
    for term in terms:
        covering = [other for other in terms if _admits_all_of(other.match, term.match)]
        missing_domains: set[str] = set()
        missing_ports: set[int] = set()
        for pattern in domains:
            for port in ports:
                # What Squid let `other` reach, before any narrowing of ours.
                reached = any(
                    (other.match.ports is None or port in other.match.ports)
                    and (
                        other.match.domains is None
                        or any(covers(p, pattern) for p in other.match.domains)
                    )
                    for other in covering
                )
                if not reached:
                    missing_domains.add(pattern.text)
                    missing_ports.add(port)
        if missing_domains:
            who = "its users" if term.match.users is not None else f"client {term.client!r}"
            report.warn_line(
                term.rule,
                f"in Squid {who} could not reach every allowlist entry on every allowed port; "
                "connectproxy has one allowlist for all clients, so it now also reaches "
                f"{', '.join(sorted(missing_domains))} (ports "
                f"{', '.join(str(p) for p in sorted(missing_ports))}) — wider than Squid",
            )


def _admits_all_of(wide: Match, narrow: Match) -> bool:
    """Whether every client `narrow` admits is also admitted by `wide` (same credentials)."""
    if narrow.users is not None:
        if wide.users is None:
            return wide.sources is None
        return wide.users.includes(narrow.users)
    if wide.users is not None:
        return False
    if wide.sources is None:
        return True
    if narrow.sources is None:
        return False
    return not subtract(narrow.sources, wide.sources)
