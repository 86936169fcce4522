"""From the allow terms of squid.conf to connectproxy's policy: who is admitted, where they go.

rules.py says, for each `http_access allow` line, which sources or users it admits and which
ports and hosts they may reach after the deny lines above it. connectproxy's model
(docs/configuration.md) then takes:

- the clients: the source networks of those lines (one client per `src` ACL, named after it),
  and the htpasswd file when a line needs `proxy_auth`;
- the allowlist: the union of their `dstdomain` ACLs and their ports, shared by every client.

This is the one step that decides how the terms combine into what each client or user may
reach; rules.py before it knows nothing of connectproxy's shape. Where that shape cannot say what
Squid says, the result is made stricter when it can be, and a warning is reported at the line in
every case. The fixed translation rules (docs/squid-migration.md) are applied here: a line
without a `src` ACL admits the client `any`; no `dstdomain` on any allow line means the Defender
for IoT allowlist; ports come from `deny CONNECT !SSL_ports`, else 443.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectproxy.configfile.squid.acls import Rule
from connectproxy.configfile.squid.parse import Directive
from connectproxy.configfile.squid.report import Report, SquidImportError
from connectproxy.configfile.squid.rules import Match, Term, connect_ports_rule
from connectproxy.configfile.squid.sets import (
    ANYWHERE,
    collapse,
    covers,
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
