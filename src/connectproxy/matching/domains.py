"""Domain patterns: what an `allow.domains` entry means and how one is read.

The pattern syntax follows Squid's dstdomain (docs/configuration.md, "Domain patterns"). Host names
reaching `matches` were normalised by the request parser with the same `normalise_hostname` that
reads the patterns, so a pattern can never be written that no request could match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from connectproxy.wire.hostnames import normalise_hostname

PatternKind = Literal["suffix", "subdomains", "exact"]


@dataclass(frozen=True)
class DomainPattern:
    """One `allow.domains` entry.

    `.example.com` (kind "suffix") matches the domain and every subdomain, as Squid's dstdomain
    does; `*.example.com` ("subdomains") matches subdomains only; `example.com` ("exact") matches
    that host alone. `domain` is lowercase, without the leading `.` or `*.`.
    """

    text: str
    kind: PatternKind
    domain: str

    def matches(self, host: str) -> bool:
        """`host` must already be normalised (lowercase, no trailing dot)."""
        if self.kind == "exact":
            return host == self.domain
        if host.endswith("." + self.domain):
            return True
        return self.kind == "suffix" and host == self.domain


def parse_domain_pattern(text: str) -> DomainPattern:
    """`.d` = d and its subdomains, `*.d` = subdomains only, `d` = exactly d."""
    if text.startswith("*."):
        kind, rest = "subdomains", text[2:]
    elif text.startswith("."):
        kind, rest = "suffix", text[1:]
    else:
        kind, rest = "exact", text
    if "*" in rest:
        raise ValueError("a wildcard may only appear as a leading '*.'")
    domain = normalise_hostname(rest)
    if kind == "suffix":
        return DomainPattern(text=text, kind="suffix", domain=domain)
    if kind == "subdomains":
        return DomainPattern(text=text, kind="subdomains", domain=domain)
    return DomainPattern(text=text, kind="exact", domain=domain)
