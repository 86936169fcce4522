"""From the allow terms of squid.conf to connectproxy's policy: who is admitted, where they go.

rules.py says, for each `http_access allow` line, which sources or users it admits and which
ports and hosts they may reach after the deny lines above it. connectproxy's model
(docs/configuration.md) then takes:

- one policy per allow line that admits by address (its hosts and ports, after the denies
  above it), and the clients: the source addresses cut into the regions the same lines admit,
  each bound to those lines' policies, so no client reaches what Squid gave only another;
- one policy per allow line that names its users (`proxy_auth alice bob`), bound to those users
  through `users` entries without password_hash (the htpasswd file keeps their passwords);
- `allow` (the policy `default`): for the other users of the htpasswd file, the union of the
  `proxy_auth REQUIRED` lines (nothing when there are none, as in Squid); else the first line's
  policy. A named user is bound to `default` too when such lines exist: they admit any user.

This is the one step that decides how the terms combine into what each client or user may
reach; rules.py before it knows nothing of connectproxy's shape. Where that shape cannot say what
Squid says, the result is made stricter when it can be, and a warning is reported at the line in
every case. The fixed translation rules (docs/squid-migration.md) are applied here: a line
without a `src` ACL admits the client `any`; no `dstdomain` on any allow line means the Defender
for IoT allowlist; ports come from `deny CONNECT !SSL_ports`, else 443.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectproxy.configfile.squid.acls import Rule
from connectproxy.configfile.squid.parse import Directive
from connectproxy.configfile.squid.report import Report
from connectproxy.configfile.squid.rules import Match, Term, connect_ports_rule
from connectproxy.configfile.squid.sets import (
    ANYWHERE,
    collapse,
    covers,
    intersect,
    net_text,
    subtract,
    unique_patterns,
)
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPNetwork

__all__ = ["DEFENDER_ALLOWLIST", "access"]

# The embedded default (docs/configuration.md): what a Defender for IoT sensor needs to reach.
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
    """The keys that say who may go where: `allow`, `policies`, `clients` and, when an allow
    line needs a password, `htpasswd_file`. `htpasswd` is the translated `auth_param basic
    program` line (directive index, directive, password file), or None.

    Each allow line becomes its own policy (its hosts and ports), bound to exactly the clients
    it admits, so no client reaches what another line allowed someone else. Users of the
    password file are always bound to `default` (`allow`), which is the union of the proxy_auth
    lines' destinations.
    """
    password_file = htpasswd[2] if htpasswd is not None else None
    fallback = _fallback_domains(terms, report)
    destinations: list[tuple[Term, _Policy]] = []
    for term in terms:
        policy = _term_policy(term, rules, fallback, report)
        if policy is not None:
            destinations.append((term, policy))
    _plain_http_note(terms, report)
    user_terms = [
        (t, p)
        for t, p in destinations
        if t.match.users is not None and _password_admission(t, password_file, report)
    ]
    # Lines admitting any user of the file share `default`; lines naming users get policies.
    any_user_terms = [(t, p) for t, p in user_terms if _any_user(t)]
    named_terms = [(t, p) for t, p in user_terms if not _any_user(t)]
    source_terms = [(t, p) for t, p in destinations if t.match.users is None]
    own_terms = source_terms + named_terms
    names = _policy_names([t for t, _ in own_terms], default_first=not user_terms)
    policies: dict[str, dict[str, Any]] = {}
    for position, ((_, policy), name) in enumerate(zip(own_terms, names, strict=True)):
        # A line allowing exactly what an earlier one allows shares its policy.
        same = [n for n, mapping in policies.items() if mapping == policy.mapping()]
        if same:
            names[position] = same[0]
        else:
            policies[name] = policy.mapping()
    source_names = names[: len(source_terms)]
    users = _named_users(named_terms, names[len(source_terms) :], bool(any_user_terms))
    if any_user_terms:
        default = _union([p for _, p in any_user_terms])
        _check_user_widening([t for t, _ in any_user_terms], default, report)
    elif named_terms:
        # The file's other users match no allow line in Squid: `default` admits nothing.
        default = _Policy((), frozenset({_TLS_PORT}))
        index, d, _ = htpasswd if htpasswd is not None else (0, None, None)
        if d is not None:
            report.warn(
                index,
                d.where,
                "every proxy_auth allow line names its users, so the file's other users are "
                "bound to allow, which admits nothing (as in Squid"
                + (
                    ", except from the addresses the allow lines without a password admit)"
                    if source_terms
                    else ")"
                ),
            )
    elif "default" in policies:
        default = _Policy.from_mapping(policies.pop("default"))
    else:
        default = _Policy(
            tuple(parse_domain_pattern(text) for text in DEFENDER_ALLOWLIST),
            frozenset({_TLS_PORT}),
        )
    if terms and not destinations:
        report.warn_line(
            terms[0].rule, "no allow line leaves a host reachable: nobody gets through"
        )
    clients = _admission(
        list(zip([t for t, _ in source_terms], source_names, strict=True)),
        report,
        taken=[user["name"] for user in users],
    )
    use_htpasswd = bool(user_terms)
    if use_htpasswd:
        _credentials_note([t for t, _ in source_terms], report)
    mapping: dict[str, Any] = {"allow": default.mapping()}
    if policies:
        mapping["policies"] = policies
    mapping["clients"] = clients
    if users:
        mapping["users"] = users
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


@dataclass(frozen=True)
class _Policy:
    """Where one allow line lets its clients go: hosts and ports, paired."""

    domains: tuple[DomainPattern, ...]
    ports: frozenset[int]

    def mapping(self) -> dict[str, Any]:
        return {"ports": sorted(self.ports), "domains": [p.text for p in self.domains]}

    @staticmethod
    def from_mapping(mapping: dict[str, Any]) -> _Policy:
        return _Policy(
            tuple(parse_domain_pattern(text) for text in mapping["domains"]),
            frozenset(mapping["ports"]),
        )


def _union(policies: Sequence[_Policy]) -> _Policy:
    domains = unique_patterns(p for policy in policies for p in policy.domains)
    return _Policy(domains, frozenset(port for policy in policies for port in policy.ports))


def _policy_names(terms: Sequence[Term], *, default_first: bool) -> list[str]:
    """`line-N` after the http_access line (N its line number), the first one `default` when no
    password users need `allow`; a second line with the same number gets `-2`, `-3`..."""
    names: list[str] = []
    for position, term in enumerate(terms):
        if default_first and position == 0:
            names.append("default")
            continue
        base = "line-" + term.rule.directive.where.rsplit(":", 1)[-1]
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def _fallback_domains(terms: Sequence[Term], report: Report) -> tuple[DomainPattern, ...]:
    """The hosts of a line without dstdomain acl: Squid lets it reach any host; connectproxy
    needs a list, so the other lines' dstdomain acls, else the Defender for IoT allowlist."""
    named = unique_patterns(p for t in terms if t.match.domains for p in t.match.domains)
    for term in terms:
        if term.match.domains is not None:
            continue
        if named:
            report.warn_line(
                term.rule,
                "Squid lets this line reach any host; connectproxy limits it to the dstdomain "
                "acls of the other allow lines (stricter than Squid)",
            )
        else:
            report.warn_line(
                term.rule,
                "Squid lets this line reach any host; no allow line names a dstdomain acl, "
                "so its policy's domains are the Defender for IoT allowlist: "
                + ", ".join(DEFENDER_ALLOWLIST),
            )
    if named:
        return named
    return tuple(parse_domain_pattern(text) for text in DEFENDER_ALLOWLIST)


def _term_policy(
    term: Term, rules: Sequence[Rule], fallback: tuple[DomainPattern, ...], report: Report
) -> _Policy | None:
    """The line's own policy, or None (warned) when nothing is left reachable through it."""
    domains = term.match.domains if term.match.domains is not None else fallback
    kept: list[DomainPattern] = []
    for allowed in domains:
        inside = [e for e in term.match.except_domains if covers(allowed, e)]
        if any(covers(e, allowed) for e in term.match.except_domains):
            continue  # refused for this line altogether: exactly Squid
        if inside:
            # No policy can refuse a host inside one it allows: keep only the domain itself.
            apex = parse_domain_pattern(allowed.text[1:]) if allowed.text[0] == "." else None
            if apex is not None and any(covers(e, apex) for e in term.match.except_domains):
                apex = None
            kept_text = f"only {apex.text} itself is kept" if apex else "it is left out"
            report.warn_line(
                term.rule,
                f"Squid refuses {', '.join(e.text for e in inside)} for this line, and "
                f"connectproxy cannot make an exception inside {allowed.text}, so "
                f"{kept_text} in this line's policy (stricter than Squid)",
            )
            if apex is not None:
                kept.append(apex)
            continue
        kept.append(allowed)
    ports = _term_ports(term, rules, report)
    if not kept or not ports:
        report.warn_line(
            term.rule,
            "after the deny lines above it, no host and port this line allows can be written "
            "as a policy, so nothing is let through by it (stricter than Squid)",
        )
        return None
    return _Policy(tuple(kept), ports)


# --- admission --------------------------------------------------------------------------------


def _admission(
    named_terms: Sequence[tuple[Term, str]], report: Report, taken: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`clients` from the lines that admit by address, named apart from the names in `taken`
    (the users': a client and a user may not share a name, and squid.conf may give a src acl
    the name of a user).

    A connection belongs to one client only (the first that matches), so the source addresses
    are cut into regions that the same lines admit; each region is one client bound to those
    lines' policies, in squid.conf order. Squid allows what any of its lines allows, and a
    client with several policies is allowed what any of them allows: the same decision.
    """
    regions: list[tuple[tuple[IPNetwork, ...], tuple[int, ...]]] = [(ANYWHERE, ())]
    for position, (term, _) in enumerate(named_terms):
        match, rule = term.match, term.rule
        sources = ANYWHERE if match.sources is None else match.sources
        everyone = " and ".join(net_text(n) for n in sources if n.prefixlen == 0)
        if everyone:
            because = "this line has no src acl, so" if term.client == "any" else "its src acl:"
            report.warn_line(
                rule,
                f"{because} ANY source address is admitted without a password (client "
                f"{term.client!r}: {everyone}); restrict it to your sensors' networks",
            )
        refined: list[tuple[tuple[IPNetwork, ...], tuple[int, ...]]] = []
        for nets, lines in regions:
            inside = intersect(nets, sources)
            outside = subtract(nets, sources)
            if inside:
                refined.append((inside, (*lines, position)))
            if outside:
                refined.append((outside, lines))
        regions = refined
    # A client keeps every address its lines share, not only its region: the clients are
    # ordered by how many lines admit them, most first, so an address still meets the client
    # of exactly its lines first, and a line's networks are written as squid.conf wrote them.
    line_sets = sorted({lines for _, lines in regions if lines}, key=lambda ls: (-len(ls), ls))
    clients: list[dict[str, Any]] = []
    used = set(taken)
    for lines in line_sets:
        blocks: tuple[IPNetwork, ...] = ANYWHERE
        for i in lines:
            shared = named_terms[i][0].match.sources
            blocks = intersect(blocks, ANYWHERE if shared is None else shared)
        # Named after its lines' src acls; `any` (no src acl) only when it is all there is.
        parts = list(dict.fromkeys(named_terms[i][0].client for i in lines))
        base = "+".join(p for p in parts if p != "any" or len(parts) == 1)
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}-{count}"
        used.add(name)
        client: dict[str, Any] = {"name": name, "networks": [net_text(n) for n in collapse(blocks)]}
        bound = list(dict.fromkeys(named_terms[i][1] for i in lines))
        if bound != ["default"]:
            client["policies"] = bound
        clients.append(client)
    return clients


def _any_user(term: Term) -> bool:
    """Whether the line admits every user of the password file (`proxy_auth REQUIRED`)."""
    return term.match.users is not None and term.match.users.names is None


def _named_users(
    named_terms: Sequence[tuple[Term, _Policy]], names: Sequence[str], any_user_lines: bool
) -> list[dict[str, Any]]:
    """A `users` entry, without password_hash, for each user an allow line names: bound to the
    policies of exactly the lines naming it, in squid.conf order, and to `default` when lines
    admitting any user exist (Squid lets a named user through those too)."""
    bound: dict[str, list[str]] = {}
    for (term, _), name in zip(named_terms, names, strict=True):
        assert term.match.users is not None and term.match.users.names is not None
        for user in sorted(term.match.users.names):
            if name not in bound.setdefault(user, []):
                bound[user].append(name)
    users = []
    for user, policies in bound.items():
        if any_user_lines:
            policies.append("default")
        users.append({"name": user, "policies": policies})
    return users


def _password_admission(term: Term, password_file: Path | None, report: Report) -> bool:
    """Whether a proxy_auth line can admit its users as Squid did.

    A line naming its users becomes their own policy, and a line admitting any user is part of
    `default`; either way they are admitted from any address, so a line that Squid limited to
    some source addresses cannot be kept without letting others through: it admits nobody
    instead (stricter, warned).
    """
    match, rule = term.match, term.rule
    if password_file is None:
        report.warn_line(
            rule,
            "needs a password, but there is no `auth_param basic program basic_ncsa_auth "
            "FILE` to translate: nobody is admitted by password (stricter than Squid)",
        )
        return False
    if match.sources is not None:
        report.warn_line(
            rule,
            f"Squid admitted these users only from {term.client}; connectproxy admits users "
            f"of {password_file} from any address, so nobody is admitted by this line "
            "(stricter than Squid)",
        )
        return False
    return True


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
        report.warn_line(
            term.rule,
            f"Squid allows {len(ports)} ports here; connectproxy lists only "
            f"{', '.join(str(p) for p in sorted(kept)) or 'none of them'} (stricter than Squid)",
        )
        return kept
    return ports


def _credentials_note(source_terms: Sequence[Term], report: Report) -> None:
    """A client that sends a password is admitted as that user, with the user's policies only
    (docs/configuration.md, "Credentials decide alone"); Squid still lets it through the lines
    that admit by address, since it consults credentials only at a proxy_auth acl."""
    for term in source_terms:
        report.warn_line(
            term.rule,
            "a client admitted by this line that sends a password is admitted as that user "
            "instead, with only that user's policies; Squid lets it through this line whatever "
            "user it names (stricter than Squid)",
        )


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


def _check_user_widening(terms: Sequence[Term], default: _Policy, report: Report) -> None:
    """Users of the password file share `allow`: report a line whose users now reach more."""
    for term in terms:
        covering = [other for other in terms if _admits_all_of(other.match, term.match)]
        missing_domains: set[str] = set()
        missing_ports: set[int] = set()
        for pattern in default.domains:
            for port in default.ports:
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
            report.warn_line(
                term.rule,
                "in Squid its users could not reach every host of the other proxy_auth lines "
                "on every port; users of the password file share allow, so they now also "
                f"reach {', '.join(sorted(missing_domains))} (ports "
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
