"""The http_access rule algebra: which CONNECT requests each allow line lets through in Squid.

Squid walks its http_access lines top to bottom and the first line whose ACLs all match answers;
when none matches, the answer is the opposite of the last line's. So what an `allow` line lets
through is what its ACLs match, minus what every `deny` line above it matches. This module works
that out line by line, as sets (sets.py), and hands back one `Term` per allow line: who it admits
(source networks or users) and where they may go (ports, domains), after the denies above it.
Turning the terms into connectproxy's clients and allowlist is access.py's job.

Only CONNECT requests matter: a line that can never match one (a `method` ACL without CONNECT,
the cache manager) is dropped, and an ACL that always matches one (`all`, `CONNECT`) is dropped
from its line. Where a deny line cannot be expressed exactly (it constrains several properties
of a request at once, or uses an ACL connectproxy cannot evaluate) the term is made stricter than
Squid if it can be, and every such difference is reported at the line responsible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from connectproxy.config.model import DEFAULT_DENY_NETWORKS
from connectproxy.configfile.squid.acls import Condition, Rule
from connectproxy.configfile.squid.report import Report
from connectproxy.configfile.squid.sets import (
    ALL_PORTS,
    ANYWHERE,
    collapse,
    complement,
    covers,
    intersect,
    intersect_patterns,
    net_text,
    subtract,
    unique_patterns,
)
from connectproxy.matching.domains import DomainPattern
from connectproxy.matching.netset import IPNetwork

__all__ = ["Evaluation", "Match", "Term", "Users", "connect_ports_rule", "evaluate"]


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
        # Lines that answer 407 to some requests without credentials: a deny for those.
        challenges: list[tuple[Rule, Match]] = []
        # A deny naming users that could not be applied: later password lines cannot be kept.
        user_deny: Rule | None = None
        for position, rule in enumerate(rules):
            match = self.match_of(rule)
            challenge = _challenge(rule)
            if match is None:
                if challenge is not None:
                    challenges.append((rule, challenge))
                if not rule.allow and user_deny is None and _names_users(rule):
                    user_deny = rule
                continue
            if rule.allow:
                if rule.implicit:
                    self.report.warn_line(
                        rule,
                        "the last http_access line is a deny, so Squid allows every request no "
                        "line matched; translated as an allow line for every client",
                    )
                term = self.apply_denies(rule, match, denies)
                if term is not None and term.match.users is None:
                    term = self.apply_challenges(term, challenges)
                elif term is not None and user_deny is not None:
                    self.report.warn_line(
                        rule,
                        f"{user_deny.text} ({user_deny.directive.where}) refuses some users "
                        "before this line, which connectproxy cannot express, so nobody is "
                        "admitted by password through this line (stricter than Squid)",
                    )
                    term = None
                if term is not None:
                    terms.append(term)
                if not match.dimensions():  # `allow all`
                    self.note_unreachable(rule, rules[position + 1 :])
                    return terms
            if challenge is not None:
                challenges.append((rule, challenge))
            if rule.allow:
                pass
            elif match.destinations:
                self.deny_destinations(rule, match)
            elif not match.dimensions():  # `deny all`
                self.note_unreachable(rule, rules[position + 1 :])
                return terms
            else:
                denies.append((rule, match))
        return terms

    def apply_challenges(self, term: Term, challenges: list[tuple[Rule, Match]]) -> Term | None:
        """A line above that reaches a proxy_auth acl answers 407 to a request without
        credentials, so the requests it asks a password of never reach this line: for a line
        admitting by address, that line is a deny of the requests its acls before the
        proxy_auth acl match (`allow updates admins` asks only those going to `updates`)."""
        match = term.match
        for rule, asked in challenges:
            if _disjoint(match, asked):
                continue
            dimensions = _deciding(match, asked)
            where = f"at {rule.text} ({rule.directive.where}) before this line"
            if not dimensions:
                self.report.warn_line(
                    term.rule,
                    f"Squid asks a client without a password for one {where} for every request "
                    "this line allows, so it admits nobody without a password (as in Squid); "
                    + _PASSWORD_SENT,
                )
                return None
            dimension = dimensions[0]
            stricter = (
                f" (for every request with those {dimension}, though Squid asks only for some: "
                "stricter than Squid)"
                if len(dimensions) > 1
                else ""
            )
            narrowed = _subtract_dimension(match, asked, dimension)
            self.report.warn_line(
                term.rule,
                f"Squid asks a client without a password for one {where}, for "
                f"{_described(asked, dimension)}: this line does not let those through without "
                f"a password{stricter}; " + _PASSWORD_SENT,
            )
            if narrowed is None:
                return None
            match = narrowed
        return replace(term, match=match)

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
            narrowed = _narrowed(match, condition)
            if narrowed is not None:
                match = narrowed
            elif acl.type in ("method", "manager"):
                if not _holds_for_connect(condition):
                    return None
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
        if _empty(match):
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
            # A deny with no conditions ended the walk in terms(), so there is one at least,
            # unless the allow line lies wholly inside it.
            dimensions = _deciding(match, refused)
            if not dimensions:
                self.report.warn_line(
                    rule,
                    f"{deny.text} ({deny.directive.where}) refuses every request this line "
                    "allows, so it lets nothing through (as in Squid)",
                )
                return None
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


def _challenge(rule: Rule) -> Match | None:
    """The requests without credentials that reach a proxy_auth acl of `rule` (Squid answers
    them 407 there): what the acls before it match. None if none can.

    An acl this module cannot evaluate counts as matching (the challenge then covers more
    requests than Squid's, which makes the lines below it stricter, never wider).
    """
    asked = Match()
    for condition in rule.conditions:
        if condition.acl.type == "proxy_auth":
            return None if _empty(asked) else asked
        narrowed = _narrowed(asked, condition)
        if narrowed is not None:
            asked = narrowed
        elif condition.acl.type in ("method", "manager") and not _holds_for_connect(condition):
            return None
    return None


def _narrowed(match: Match, condition: Condition) -> Match | None:
    """`match` narrowed by a condition on a request's source, port or host (a `src`, `port` or
    `dstdomain` acl, negated or not); None for a condition on anything else."""
    acl, negated = condition.acl, condition.negated
    if acl.type == "src":
        nets = complement(acl.networks) if negated else acl.networks
        if nets == ANYWHERE:
            return match  # `all`: always true
        joined = nets if match.sources is None else intersect(match.sources, nets)
        return replace(match, sources=joined)
    if acl.type == "port":
        ports = ALL_PORTS - acl.ports if negated else acl.ports
        return replace(match, ports=ports if match.ports is None else match.ports & ports)
    if acl.type == "dstdomain":
        if negated:
            return replace(match, except_domains=(*match.except_domains, *acl.domains))
        patterns = acl.domains
        if match.domains is not None:
            patterns = intersect_patterns(match.domains, patterns)
        return replace(match, domains=patterns)
    return None


def _holds_for_connect(condition: Condition) -> bool:
    """Whether a `method` or `manager` condition holds for a CONNECT request (cache manager
    requests are never CONNECT)."""
    if condition.acl.type == "method":
        return ("CONNECT" in condition.acl.methods) != condition.negated
    return condition.negated


def _empty(match: Match) -> bool:
    """Whether one of the match's dimensions was narrowed to nothing: it matches no request."""
    return match.sources == () or match.ports == frozenset() or match.domains == ()


def _described(asked: Match, dimension: str) -> str:
    """The part of a challenge a warning names: its sources, hosts or ports."""
    if dimension == "sources":
        return "sources " + ", ".join(net_text(n) for n in collapse(asked.sources or ()))
    if dimension == "ports":
        return "ports " + _ports_text(asked.ports or frozenset())
    hosts = ", ".join(p.text for p in asked.domains or ())
    unless = ", ".join(p.text for p in asked.except_domains)
    if hosts and unless:
        return f"hosts {hosts} (but not {unless})"
    return f"hosts {hosts}" if hosts else f"every host but {unless}"


def _ports_text(ports: frozenset[int]) -> str:
    shown = sorted(ports)
    return ", ".join(map(str, shown)) if len(shown) <= 8 else f"{len(shown)} ports"


def _names_users(rule: Rule) -> bool:
    """Whether a line has a (non-negated) proxy_auth acl."""
    return any(c.acl.type == "proxy_auth" and not c.negated for c in rule.conditions)


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


def _deciding(allowed: Match, refused: Match) -> list[str]:
    """The dimensions of `refused` that split `allowed`: those whose value does not already hold
    for every request `allowed` matches. A deny `net1 sites2` above `allow net1 sites1 sites2`
    constrains two properties, but for that line only the hosts decide, so taking its hosts away
    is exact. Empty: the deny refuses everything the line allows."""
    left = []
    for dimension in refused.dimensions():
        if dimension == "sources":
            inside = allowed.sources is not None and not subtract(
                allowed.sources, refused.sources or ()
            )
        elif dimension == "ports":
            inside = allowed.ports is not None and allowed.ports <= (refused.ports or frozenset())
        elif dimension == "domains":
            inside = (
                allowed.domains is not None
                and refused.domains is not None
                and not refused.except_domains
                and all(any(covers(r, a) for r in refused.domains) for a in allowed.domains)
            )
        else:
            inside = False
        if not inside:
            left.append(dimension)
    return left


# What a challenge above an address line means for a client that answers it: Squid goes on to
# the line, connectproxy does not (credentials admit a user only through proxy_auth lines).
_PASSWORD_SENT = (
    "nor does it let through a client that then sends a password, which Squid does when the "
    "line above neither allows nor refuses its user: connectproxy admits users only through "
    "lines with a proxy_auth acl (stricter than Squid)"
)


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
    # `deny acl !other`: its hosts minus `other`'s are refused, so an allowed pattern inside
    # them keeps the hosts `other` takes back.
    assert refused.domains is not None
    if allowed.domains is None:
        return replace(allowed, except_domains=(*allowed.except_domains, *refused.domains))
    taken_back = refused.except_domains
    left: list[DomainPattern] = []
    for a in allowed.domains:
        if any(covers(r, a) for r in refused.domains):
            left.extend(intersect_patterns((a,), taken_back))
        else:
            left.append(a)
    remaining = unique_patterns(left)
    inside = tuple(
        r
        for r in refused.domains
        if not any(covers(e, r) for e in taken_back)
        for a in remaining
        if covers(a, r) and not covers(r, a)
    )
    if not remaining:
        return None
    return replace(allowed, domains=remaining, except_domains=(*allowed.except_domains, *inside))
