"""Generated squid.confs, the requests to try on them, and Squid's rules as a reference model.

Pure and seeded: `generate(seed)` always returns the same config, so a disagreement found by
tests/test_squid_differential.py is reproduced by its seed alone. Nothing here starts a process
or opens a socket; the test module does that.

The configs are the CONNECT-egress subset of SPEC section 9: `src`, `proxy_auth`, `dstdomain`
and `port` ACLs (and Squid's built-in `CONNECT` and `all`), `http_access allow|deny` lines with
negation, in random order, with or without a final `deny all`. Every name they use is synthetic
and every source a loopback address, so both proxies decide without DNS and every tunnel goes to
the test's recording parent (`cache_peer` + `never_direct allow all`).

`squid_decides` evaluates a request as Squid 5 does, so the test can say which http_access line
answered (the line "responsible" for a decision); the test checks the model against the real
Squid on every request, so a mistake here shows up as a harness failure, never as a wrong verdict
on connectproxy.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

# ---- the universe a config is drawn from ---------------------------------------------------------

# Client addresses: Linux routes all of 127.0.0.0/8 to lo, so a client may bind any of them.
SOURCES = ("127.0.1.1", "127.0.1.2", "127.0.2.1", "127.1.0.1")
SRC_VALUES = (
    "127.0.1.1",
    "127.0.1.2",
    "127.0.2.1",
    "127.1.0.1",
    "127.0.1.0/24",
    "127.0.2.0/24",
    "127.0.0.0/16",
    "127.1.0.0/16",
)
# The htpasswd file's users (htpasswd -m), and a name that is not in it.
PASSWORDS = {"alice": "alice pw", "bob": "bob pw", "carol": "carol pw"}
PROXY_AUTH_NAMES = ("alice", "bob", "carol", "dave")
HOSTS = (
    "a.example.net",
    "b.a.example.net",
    "example.net",
    "z.example.net",
    "c.example.org",
    "x.c.example.org",
    "other.test",
)
DSTDOMAIN_VALUES = (
    ".example.net",
    "example.net",
    "a.example.net",
    ".a.example.net",
    "z.example.net",
    ".example.org",
    "c.example.org",
    ".c.example.org",
    "other.test",
    ".test",
)
PORTS = (443, 8443, 22)
PORT_VALUES = ("443", "8443", "22", "1-1024", "1025-65535", "8000-9000")


@dataclass(frozen=True)
class Identity:
    """What a request says about its user: nothing, or Basic credentials (right or wrong)."""

    user: str | None = None
    password: str | None = None

    @property
    def valid(self) -> bool:
        return self.user is not None and PASSWORDS.get(self.user) == self.password

    @property
    def label(self) -> str:
        if self.user is None:
            return "-"
        return self.user if self.valid else f"{self.user}(wrong password)"


# Nobody, two users of the file, and a user of the file with a wrong password: carol, whose
# right password no request sends. Squid keeps one cache entry per user name, and a wrong
# password sent for a user whose right one is cached was seen let through now and then (Squid
# 5.7, under concurrent requests): a race of Squid's, not a rule to compare with, so no request
# here meets it.
IDENTITIES = (
    Identity(),
    Identity("alice", PASSWORDS["alice"]),
    Identity("bob", PASSWORDS["bob"]),
    Identity("carol", "not carol's password"),
)


@dataclass(frozen=True)
class Request:
    source: str
    identity: Identity
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.source} user={self.identity.label} CONNECT {self.target}"


def requests() -> list[Request]:
    """Every request tried on every config: sources × identities × hosts × ports. Grouped by
    identity: connectproxy checks a password once for all the requests that present it at the
    same time, and a refused one (checked against a deliberately slow dummy hash when no
    password file is configured) is not remembered, so spreading them out would cost seconds."""
    return [
        Request(source, identity, host, port)
        for identity in IDENTITIES
        for source in SOURCES
        for host in HOSTS
        for port in PORTS
    ]


# ---- configs ------------------------------------------------------------------------------------

AclType = Literal["src", "proxy_auth", "dstdomain", "port"]


@dataclass(frozen=True)
class Acl:
    name: str
    type: AclType
    # One tuple per `acl` line: Squid appends the values of lines that repeat a name.
    lines: tuple[tuple[str, ...], ...]

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for line in self.lines for v in line)


@dataclass(frozen=True)
class Term:
    """One ACL reference on an http_access line; `name` may be a built-in (`all`, `CONNECT`)."""

    name: str
    negated: bool = False

    def __str__(self) -> str:
        return f"!{self.name}" if self.negated else self.name


@dataclass(frozen=True)
class Rule:
    allow: bool
    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return "http_access " + " ".join(["allow" if self.allow else "deny", *map(str, self.terms)])


@dataclass(frozen=True)
class SquidConf:
    seed: int
    acls: tuple[Acl, ...]
    rules: tuple[Rule, ...]

    def acl(self, name: str) -> Acl | None:
        return next((a for a in self.acls if a.name == name), None)


@dataclass(frozen=True)
class Rendered:
    """A config as a file: its text and where each http_access line and acl ended up."""

    text: str
    rule_lines: tuple[int, ...]  # 1-based line of each rule of SquidConf.rules
    acl_lines: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _covers(outer: str, inner: str) -> bool:
    """Whether dstdomain value `outer` matches every host `inner` matches."""
    if outer.startswith("."):
        bare = inner.lstrip(".")
        return bare == outer[1:] or bare.endswith(outer)
    return outer == inner


def _overlap(kind: AclType, a: str, b: str) -> bool:
    """Values one acl must not hold together: Squid 5 warns about them and drops one."""
    if kind == "dstdomain":
        return _covers(a, b) or _covers(b, a)
    if kind == "src":
        na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
        return na.overlaps(nb)
    if kind == "port":
        la, _, ha = a.partition("-")
        lb, _, hb = b.partition("-")
        return int(la) <= int(hb or lb) and int(lb) <= int(ha or la)
    return a == b


def _pick_values(rng: random.Random, kind: AclType, pool: Sequence[str], most: int) -> list[str]:
    chosen: list[str] = []
    for value in rng.sample(list(pool), len(pool)):
        if len(chosen) == most:
            break
        if not any(_overlap(kind, value, other) for other in chosen):
            chosen.append(value)
    return chosen


def _make_acl(rng: random.Random, name: str, kind: AclType) -> Acl:
    if kind == "proxy_auth":
        if rng.random() < 0.4:
            return Acl(name, kind, (("REQUIRED",),))
        return Acl(name, kind, (tuple(rng.sample(PROXY_AUTH_NAMES, rng.randint(1, 2))),))
    pool = {"src": SRC_VALUES, "dstdomain": DSTDOMAIN_VALUES, "port": PORT_VALUES}[kind]
    values = _pick_values(rng, kind, pool, rng.randint(1, 3))
    if len(values) > 1 and rng.random() < 0.2:
        # The same name on two acl lines: Squid takes the union.
        return Acl(name, kind, (tuple(values[:1]), tuple(values[1:])))
    return Acl(name, kind, (tuple(values),))


def generate(seed: int) -> SquidConf:
    """One config, a function of `seed` only."""
    rng = random.Random(seed)
    counts: dict[AclType, int] = {
        "src": rng.randint(1, 3),
        "proxy_auth": rng.choice((0, 1, 1, 2)),
        "dstdomain": rng.randint(1, 3),
        "port": rng.randint(0, 2),
    }
    prefix = {"src": "net", "proxy_auth": "users", "dstdomain": "sites", "port": "ports"}
    acls = [
        _make_acl(rng, f"{prefix[kind]}{i}", kind)
        for kind, count in counts.items()
        for i in range(1, count + 1)
    ]
    rng.shuffle(acls)
    by_kind = {kind: [a.name for a in acls if a.type == kind] for kind in counts}
    whos = by_kind["src"] + by_kind["proxy_auth"]
    wheres = by_kind["dstdomain"] + by_kind["port"]

    rules: list[Rule] = []
    safe_ports = by_kind["port"] and rng.random() < 0.35
    for _ in range(rng.randint(2, 6)):
        allow = rng.random() < 0.6
        terms: list[Term] = []
        negation = 0.1 if allow else 0.3
        if allow:
            if rng.random() < 0.9:
                terms += [Term(n, rng.random() < negation) for n in _some(rng, whos, 1, 2)]
            if rng.random() < 0.9 or not terms:
                terms += [Term(n, rng.random() < negation) for n in _some(rng, wheres, 1, 2)]
        else:
            everything = whos + wheres
            terms += [Term(n, rng.random() < negation) for n in _some(rng, everything, 1, 2)]
        rng.shuffle(terms)
        rule = Rule(allow, tuple(terms))
        if rule not in rules:
            rules.append(rule)
    if safe_ports:
        # Squid's stock `deny CONNECT !SSL_ports`, somewhere: often first, sometimes after an
        # allow line, where it does not limit that line.
        ports = rng.choice(by_kind["port"])
        position = 0 if rng.random() < 0.6 else rng.randint(0, len(rules))
        rules.insert(position, Rule(False, (Term("CONNECT"), Term(ports, True))))
    ending = rng.random()
    if ending < 0.55:
        rules.append(Rule(False, (Term("all"),)))
    elif ending < 0.6:
        rules.append(Rule(True, (Term("all"),)))
    return SquidConf(seed, tuple(acls), tuple(rules))


def _some(rng: random.Random, names: list[str], low: int, high: int) -> list[str]:
    if not names:
        return []
    return rng.sample(names, min(len(names), rng.randint(low, high)))


def render(conf: SquidConf, http_port: str, auth_file: str, tail: str) -> Rendered:
    """The squid.conf: http_port and auth_param, the acls, the http_access lines, then `tail`
    (the parent and Squid's housekeeping, the same for every config)."""
    lines = [
        f"# generated by tests/squid_differential.py, seed {conf.seed}",
        f"http_port {http_port}",
        f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {auth_file}",
        "cache deny all",
    ]
    acl_lines: dict[str, tuple[int, ...]] = {}
    for acl in conf.acls:
        numbers = []
        for values in acl.lines:
            lines.append(f"acl {acl.name} {acl.type} {' '.join(values)}")
            numbers.append(len(lines))
        acl_lines[acl.name] = tuple(numbers)
    rule_lines = []
    for rule in conf.rules:
        lines.append(str(rule))
        rule_lines.append(len(lines))
    text = "\n".join(lines) + "\n" + tail
    return Rendered(text, tuple(rule_lines), acl_lines)


# ---- Squid's decision, as a model ----------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Squid's answer: `rule` is the index of the http_access line that answered, None when no
    line matched (then Squid answers the opposite of the last line). `challenge` is a 407: a
    proxy_auth acl was reached without valid credentials, which ends the walk at once."""

    allowed: bool
    rule: int | None
    challenge: bool = False


def _host_matches(value: str, host: str) -> bool:
    if value.startswith("."):
        return host == value[1:] or host.endswith(value)
    return host == value


def _port_matches(value: str, port: int) -> bool:
    low, _, high = value.partition("-")
    return int(low) <= port <= int(high or low)


def _acl_matches(conf: SquidConf, name: str, request: Request) -> bool | None:
    """True/False, or None for "credentials needed" (proxy_auth without valid ones)."""
    if name in ("all", "CONNECT"):
        return True
    acl = conf.acl(name)
    assert acl is not None, name
    if acl.type == "src":
        address = ipaddress.ip_address(request.source)
        return any(address in ipaddress.ip_network(v) for v in acl.values)
    if acl.type == "dstdomain":
        return any(_host_matches(v, request.host) for v in acl.values)
    if acl.type == "port":
        return any(_port_matches(v, request.port) for v in acl.values)
    if not request.identity.valid:
        return None
    return "REQUIRED" in acl.values or request.identity.user in acl.values


def squid_decides(conf: SquidConf, request: Request) -> Verdict:
    """http_access as Squid 5 walks it: lines in order, each line's acls left to right, the
    first line whose acls all match answers. Reaching a proxy_auth acl without valid
    credentials (negated or not) answers 407 there. No line matching: the opposite of the last
    line's action."""
    for index, rule in enumerate(conf.rules):
        matched = True
        for term in rule.terms:
            result = _acl_matches(conf, term.name, request)
            if result is None:
                return Verdict(False, index, challenge=True)
            if result == term.negated:
                matched = False
                break
        if matched:
            return Verdict(rule.allow, index)
    return Verdict(not conf.rules[-1].allow if conf.rules else False, None)


# Why connectproxy refused what Squid allowed: the rules of SPEC sections 4 and 9 that make a
# translation stricter on purpose, then the translation's own limits. Most specific first.
Cause = Literal[
    "wrong password",
    "implicit allow",
    "any host",
    "any port",
    "wide port acl",
    "translation",
]
# Those a translation following the SPEC cannot make equal: Squid let the request through a
# line that SPEC section 9 narrows (no dstdomain: any host; no port acl and no `deny CONNECT
# !SSL_ports` above it: any port; the implicit allow after a final deny: both), or with wrong
# credentials that SPEC section 4 refuses.
SPEC_STRICTER: tuple[Cause, ...] = ("wrong password", "implicit allow", "any host", "any port")
CAUSES: tuple[Cause, ...] = (*SPEC_STRICTER, "wide port acl", "translation")
# Above this many ports a translated policy keeps only 443 (configfile/squid/access.py).
LISTED_PORTS = 1024


def why_stricter(conf: SquidConf, request: Request, verdict: Verdict) -> Cause:
    """Which rule refuses a request Squid allowed (`verdict`), judged from the line that let it
    through: a summary of the differences, never a verdict (the warnings are checked apart)."""
    if request.identity.user is not None and not request.identity.valid:
        return "wrong password"
    if verdict.rule is None:
        return "implicit allow"
    rule = conf.rules[verdict.rule]
    positive = [conf.acl(t.name) for t in rule.terms if not t.negated]
    kinds = {acl.type for acl in positive if acl is not None}
    if "dstdomain" not in kinds:
        return "any host"
    ports_denied_above = any(
        not above.allow and above.terms[0].name == "CONNECT" for above in conf.rules[: verdict.rule]
    )
    if "port" not in kinds and not ports_denied_above and request.port != 443:
        return "any port"
    if "port" in kinds and request.port != 443:
        port_acls = tuple(acl.values for acl in positive if acl is not None and acl.type == "port")
        if _ports_allowed(port_acls) > LISTED_PORTS:
            return "wide port acl"
    return "translation"


@functools.cache
def _ports_allowed(port_acls: tuple[tuple[str, ...], ...]) -> int:
    """How many ports every one of these port acls matches."""
    return sum(
        1
        for port in range(1, 65536)
        if all(any(_port_matches(v, port) for v in values) for values in port_acls)
    )


def responsible_lines(conf: SquidConf, rendered: Rendered, verdict: Verdict) -> tuple[int, ...]:
    """Where a warning about this decision must point: the http_access line that answered (the
    last line when none did: Squid's implicit rule is the opposite of it), and the acl lines
    that line names."""
    index = verdict.rule if verdict.rule is not None else len(conf.rules) - 1
    places = [rendered.rule_lines[index]]
    for term in conf.rules[index].terms:
        places += rendered.acl_lines.get(term.name, ())
    return tuple(places)


def numbered(text: str, lines: Iterator[int] | None = None) -> str:
    """A config with line numbers, as a failure report shows it."""
    wanted = set(lines) if lines is not None else None
    shown = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# generated") or (wanted is not None and number not in wanted):
            continue
        shown.append(f"{number:3}  {line}")
    return "\n".join(shown)
