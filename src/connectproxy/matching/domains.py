"""Domain patterns: what a policy's `domains` entry means, how one is read, and the index that
looks a host up among many of them.

The pattern syntax follows Squid's dstdomain (docs/configuration.md, "Domain patterns"). Host names
reaching `matches` and `DomainIndex.match` were normalised by the request parser with the same
`normalise_hostname` that reads the patterns, so a pattern can never be written that no request
could match.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from connectproxy.wire.hostnames import normalise_hostname

PatternKind = Literal["suffix", "subdomains", "exact"]


class DomainPattern:
    """One `allow.domains` entry.

    `.example.com` (kind "suffix") matches the domain and every subdomain, as Squid's dstdomain
    does; `*.example.com` ("subdomains") matches subdomains only; `example.com` ("exact") matches
    that host alone. `domain` is lowercase, without the leading `.` or `*.`.

    Immutable and compared by value, as the frozen dataclass it replaced, but written out: a
    config may hold tens of thousands, and the dataclass's `__init__` (Python, even in the
    compiled build) cost 12 ms of explain's 200 on the benchmark's 10,000 patterns.
    """

    __slots__ = ("domain", "kind", "text")
    __match_args__ = ("text", "kind", "domain")

    text: str
    kind: PatternKind
    domain: str

    def __init__(self, text: str, kind: PatternKind, domain: str) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "domain", domain)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DomainPattern):
            return NotImplemented
        return (self.text, self.kind, self.domain) == (other.text, other.kind, other.domain)

    def __hash__(self) -> int:
        return hash((self.text, self.kind, self.domain))

    def __repr__(self) -> str:
        return f"DomainPattern(text={self.text!r}, kind={self.kind!r}, domain={self.domain!r})"

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


def covers(outer: DomainPattern, inner: DomainPattern) -> bool:
    """Whether every host `inner` matches is matched by `outer`: the squid.conf translation's
    set algebra and check-config's "adds nothing" note both ask it."""
    if outer.kind == "exact":
        return inner.kind == "exact" and inner.domain == outer.domain
    if inner.domain == outer.domain:
        return outer.kind == "suffix" or inner.kind == "subdomains"
    return inner.domain.endswith("." + outer.domain)


class DomainIndex:
    """Domain patterns looked up by the host's suffixes, label by label, not walked as a list.

    Every pattern is filed under its domain; a host is checked at itself and at each suffix that
    starts after one of its dots, so `sensor.hub.azure-devices.net` costs four dictionary
    lookups whether the policy lists four patterns or ten thousand (SPEC section 3.2: matching
    must not slow down with size). Suffixes only ever start at a label boundary, so
    `evilazure-devices.net` never reaches the entry of `.azure-devices.net`.

    At the host itself an exact or suffix pattern matches; at a shorter suffix, a suffix or
    subdomains pattern does. Immutable once built, like the config that holds it.
    """

    __slots__ = ("_by_domain", "_size")

    def __init__(self, patterns: Iterable[DomainPattern]) -> None:
        by_domain: dict[str, tuple[DomainPattern, ...]] = {}
        size = 0
        for pattern in patterns:
            there = by_domain.get(pattern.domain)
            if there is None:
                by_domain[pattern.domain] = (pattern,)
                size += 1
            elif all(p.kind != pattern.kind for p in there):  # a repeat adds nothing
                by_domain[pattern.domain] = (*there, pattern)
                size += 1
        self._by_domain = by_domain
        self._size = size

    def __len__(self) -> int:
        """How many distinct patterns the index holds."""
        return self._size

    def match(self, host: str) -> DomainPattern | None:
        """The most specific pattern matching `host` (normalised, as `DomainPattern.matches`
        expects), or None. The longest domain answers first: a reason that names
        `hub.azure-devices.net` says more than one naming `.azure-devices.net`."""
        by_domain = self._by_domain
        for pattern in by_domain.get(host, ()):
            if pattern.kind != "subdomains":
                return pattern
        dot = host.find(".")
        while dot >= 0:
            for pattern in by_domain.get(host[dot + 1 :], ()):
                if pattern.kind != "exact":
                    return pattern
            dot = host.find(".", dot + 1)
        return None

    def __contains__(self, host: str) -> bool:
        return self.match(host) is not None
