"""Translating a squid.conf into connectproxy's configuration (SPEC section 9).

Squid and connectproxy decide differently. Squid walks its `http_access` lines top to bottom and
the first line whose ACLs all match answers. connectproxy has one fixed shape (SPEC section 3):
a client is *admitted* (by source network or by password), and then the destination must be in
*one allowlist* of ports and domains shared by every admitted client. So the translation works
out, for each `allow` line, which CONNECT requests Squid would let through it (after the `deny`
lines above it have taken their share), and then takes:

- the clients: the source networks of those lines (one client per `src` ACL, named after it),
  and the htpasswd file when a line needs `proxy_auth`;
- the allowlist: the union of their `dstdomain` ACLs and their ports.

Wherever that shape cannot say what Squid says, the translation is made *stricter* when it can
and reports a warning "FILE:LINE: message" in every case; it never widens access silently.
The rules the SPEC fixes (a line without a `src` ACL admits the client `any`; no `dstdomain`
anywhere means the Defender for IoT allowlist; ports come from `deny CONNECT !SSL_ports`, else
443; `cache_peer ... login=` becomes an upstream with an inline password) are applied here.

Only CONNECT requests matter: a line that can never match one (a `method` ACL without CONNECT,
the cache manager) is dropped, and an ACL that always matches one (`all`, `CONNECT`) is dropped
from its line.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from connectproxy.config import DEFAULT_DENY_NETWORKS, DomainPattern, IPNetwork
from connectproxy.hostnames import parse_domain_pattern
from connectproxy.squidconf import Directive, SquidConfError, read_squid_conf

__all__ = [
    "DEFENDER_ALLOWLIST",
    "SquidImportError",
    "Translation",
    "translate",
    "translate_file",
]

# SPEC section 3.1: what a Defender for IoT sensor needs to reach.
DEFENDER_ALLOWLIST = (
    ".azure-devices.net",
    ".blob.core.windows.net",
    ".servicebus.windows.net",
    "download.microsoft.com",
)

# Squid's listening port when squid.conf has no http_port.
_DEFAULT_LISTEN_PORT = 3128
# Where Squid listens for an http_port without an address: every IPv4 and IPv6 address.
_EVERY_ADDRESS = "::"
# The port sensors tunnel to, and allow.ports when squid.conf does not say.
_TLS_PORT = 443

_ALL_PORTS = frozenset(range(1, 65536))
# allow.ports is written out port by port; beyond this many it stops being a readable policy.
_MAX_LISTED_PORTS = 1024

_ANYWHERE: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)

# Squid's predefined ACLs (squid.conf.documented: "ACLs all, manager, localhost, to_localhost,
# and CONNECT are predefined").
_LOCALHOST = (ipaddress.IPv4Network("127.0.0.1/32"), ipaddress.IPv6Network("::1/128"))
_TO_LOCALHOST = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("0.0.0.0/32"),
    ipaddress.IPv6Network("::1/128"),
    ipaddress.IPv6Network("::/128"),
)

# Squid time units (cache_cf.cc parseTimeUnits), matched by prefix so "minutes" is "minute".
_TIME_UNITS = (
    ("millisecond", 0.001),
    ("second", 1.0),
    ("minute", 60.0),
    ("hour", 3600.0),
    ("day", 86400.0),
    ("week", 7 * 86400.0),
    ("fortnight", 14 * 86400.0),
    ("month", 30 * 86400.0),
    ("year", 365.2522 * 86400.0),
    ("decade", 3652.522 * 86400.0),
)

# http_port modes that make Squid something other than a forward proxy.
_NOT_FORWARD_MODES = {"intercept", "transparent", "tproxy", "accel"}
# cache_peer options that change nothing for a CONNECT-only parent.
_HARMLESS_PEER_OPTIONS = {"no-query", "default", "proxy-only", "no-digest", "no-netdb-exchange"}
# cache_peer TLS file options (Squid 4+ names and the older ssl* ones) → upstream.proxies keys.
_PEER_FILE_OPTIONS = {
    "tls-cafile": "ca_file",
    "sslcafile": "ca_file",
    "tls-cert": "cert_file",
    "sslcert": "cert_file",
    "tls-key": "key_file",
    "sslkey": "key_file",
}

# Why a well-known directive has no counterpart; anything else is "directive X ignored".
_IGNORED_BECAUSE = {
    "coredump_dir": "connectproxy writes no core dumps of its own",
    "cache_dir": "there is no cache",
    "cache_mem": "there is no cache",
    "maximum_object_size": "there is no cache",
    "refresh_pattern": "there is no cache",
    "access_log": "set log.access_log (and log.access_format: squid for Squid's line format)",
    "cache_log": "set log.level; logs go to stdout or the journal",
    "logfile_rotate": "connectproxy does not rotate logs; use logrotate or journald",
    "dns_nameservers": "connectproxy uses the system resolver",
    "visible_hostname": "connectproxy sends no error pages naming the host",
    "always_direct": "every tunnel goes through the upstream when one is configured",
    "proxy_protocol_access": (
        "connectproxy accepts a PROXY header from any peer on a listener with proxy_protocol; "
        "let only your load balancer reach that listener"
    ),
    "ssl_bump": "connectproxy never intercepts TLS",
    "http_reply_access": "connectproxy never sees HTTP replies inside a tunnel",
}

_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


# --- public API -------------------------------------------------------------------------------


class SquidImportError(Exception):
    """squid.conf cannot be translated; the message says where and why (exit status 2)."""


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


# --- ACLs and http_access lines ---------------------------------------------------------------

_AclType = Literal["src", "dst", "dstdomain", "port", "method", "proxy_auth", "manager", "other"]


@dataclass(frozen=True)
class _Acl:
    """An ACL with the values of all its `acl` lines (Squid appends lines of one name)."""

    name: str
    type: _AclType
    squid_type: str
    networks: tuple[IPNetwork, ...] = ()  # src, dst
    domains: tuple[DomainPattern, ...] = ()  # dstdomain
    ports: frozenset[int] = frozenset()  # port
    methods: frozenset[str] = frozenset()  # method
    users: frozenset[str] | None = frozenset()  # proxy_auth; None for REQUIRED (any user)
    defined_at: tuple[int, str] | None = None  # (directive index, FILE:LINE); None if built in


_BUILTIN_ACLS = (
    _Acl("all", "src", "src", networks=_ANYWHERE),
    _Acl("localhost", "src", "src", networks=_LOCALHOST),
    _Acl("to_localhost", "dst", "dst", networks=_TO_LOCALHOST),
    _Acl("manager", "manager", "url_regex"),
    _Acl("CONNECT", "method", "method", methods=frozenset({"CONNECT"})),
)

_SUPPORTED_TYPES: dict[str, _AclType] = {
    "src": "src",
    "dst": "dst",
    "dstdomain": "dstdomain",
    "port": "port",
    "method": "method",
    "proxy_auth": "proxy_auth",
}


@dataclass(frozen=True)
class _Condition:
    acl: _Acl
    negated: bool

    @property
    def text(self) -> str:
        return f"!{self.acl.name}" if self.negated else self.acl.name


@dataclass(frozen=True)
class _Rule:
    """One `http_access` line; `index` orders warnings by where the directive appeared."""

    allow: bool
    conditions: tuple[_Condition, ...]
    directive: Directive
    index: int
    implicit: bool = False

    @property
    def text(self) -> str:
        if self.implicit:
            return "Squid's implicit final `http_access allow all`"
        words = ["allow" if self.allow else "deny", *(c.text for c in self.conditions)]
        return "`http_access " + " ".join(words) + "`"


@dataclass(frozen=True)
class _Users:
    """Who must authenticate: `names` None means any user the password file accepts."""

    names: frozenset[str] | None

    def intersect(self, other: _Users) -> _Users:
        if self.names is None:
            return other
        if other.names is None:
            return self
        return _Users(self.names & other.names)

    def includes(self, other: _Users) -> bool:
        if self.names is None:
            return True
        return other.names is not None and other.names <= self.names


@dataclass(frozen=True)
class _Match:
    """The CONNECT requests an http_access line matches; a field left None means "any".

    `domains` is where the host must be, `except_domains` where it must not be. `users` with
    `users_negated` (only in a deny line: `deny !auth`) matches requests *without* such a user.
    """

    sources: tuple[IPNetwork, ...] | None = None
    users: _Users | None = None
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
class _Term:
    """An allow line as connectproxy will apply it: who it admits and what it allows."""

    rule: _Rule
    match: _Match
    client: str  # the client name, for a line that admits by source address


@dataclass(frozen=True)
class _Peer:
    directive: Directive
    index: int
    entry: dict[str, Any]
    round_robin: bool


# --- the translator ---------------------------------------------------------------------------


class _Translator:
    """One translation run: reads the directives, then turns the http_access lines into policy."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[tuple[int, int, str]] = []
        self.acls: dict[str, _Acl] = {acl.name: acl for acl in _BUILTIN_ACLS}
        self.rules: list[_Rule] = []
        self.listen: list[str | dict[str, Any]] = []
        self.saw_http_port = False
        self.htpasswd: tuple[int, Directive, Path] | None = None
        self.peers: list[_Peer] = []
        self.never_direct: list[tuple[int, Directive]] = []
        self.timeouts: dict[str, float] = {}
        self.ignored: dict[str, list[tuple[int, Directive]]] = {}
        self.extra_denied: list[IPNetwork] = []
        # The last directive read: where Squid's built-in defaults take over.
        self.end: tuple[int, str] = (0, f"{source}:1")

    # --- warnings ---

    def warn(self, index: int, where: str, message: str) -> None:
        """Record "FILE:LINE: message"; `index` (directive order) sorts the final list."""
        self.warnings.append((index, len(self.warnings), f"{where}: {message}"))

    def warn_rule(self, rule: _Rule, message: str) -> None:
        self.warn(rule.index, rule.directive.where, f"{rule.text}: {message}")

    def fail(self, directive: Directive, message: str) -> SquidImportError:
        return SquidImportError(f"{directive.where}: {message}")

    # --- reading directives ---

    def run(self, directives: Sequence[Directive]) -> Translation:
        for index, directive in enumerate(directives):
            self.directive(index, directive)
            self.end = (index, directive.where)
        for name, places in self.ignored.items():
            self.report_ignored(name, places)
        mapping = self.build()
        ordered = tuple(text for _, _, text in sorted(self.warnings))
        return Translation(mapping=mapping, warnings=ordered, source=self.source)

    def directive(self, index: int, d: Directive) -> None:
        match d.name:
            case "http_port":
                self.http_port(index, d)
            case "acl":
                self.acl(index, d)
            case "http_access":
                self.http_access(index, d)
            case "auth_param":
                self.auth_param(index, d)
            case "cache_peer":
                self.cache_peer(index, d)
            case "never_direct":
                self.never_direct.append((index, d))
            case "connect_timeout":
                self.timeouts["connect"] = self.seconds(index, d)
            case "read_timeout":
                self.timeouts["idle"] = self.seconds(index, d)
            case "cache":
                if d.args != ("deny", "all"):
                    self.warn(index, d.where, "`cache` ignored: there is no cache")
            case "if" | "else" | "endif":
                raise self.fail(
                    d,
                    "conditional configuration (if/else/endif) cannot be translated: which "
                    "branch Squid uses depends on its worker process; keep the branch you need",
                )
            case _:
                self.ignored.setdefault(d.name, []).append((index, d))

    def report_ignored(self, name: str, places: list[tuple[int, Directive]]) -> None:
        """One warning per directive name, at its first line, listing the other lines."""
        index, first = places[0]
        message = f"directive {name} ignored"
        reason = _IGNORED_BECAUSE.get(name)
        if reason:
            message += f": {reason}"
        others = [d.where for _, d in places[1:]]
        if others:
            shown = ", ".join(others[:5])
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            message += f" (also at {shown}{more})"
        self.warn(index, first.where, message)

    def seconds(self, index: int, d: Directive) -> float:
        """A Squid time value: "30 seconds", "2 minutes", "1.5 hours"... A bare number is
        seconds, as older Squid releases read it (Squid 5 refuses it)."""
        if not d.args or len(d.args) > 2:
            raise self.fail(d, f"{d.name} needs a time such as `{d.name} 30 seconds`")
        try:
            value = float(d.args[0])
        except ValueError:
            raise self.fail(d, f"{d.name}: {d.args[0]!r} is not a number") from None
        factor = 1.0
        if len(d.args) == 2:
            unit = d.args[1].lower()
            factors = [f for name, f in _TIME_UNITS if unit.startswith(name)]
            if not factors:
                raise self.fail(d, f"{d.name}: unknown time unit {d.args[1]!r}")
            factor = factors[0]
        else:
            self.warn(index, d.where, f"{d.name} has no time unit: taken as seconds")
        seconds = value * factor
        if not math.isfinite(seconds) or seconds <= 0:
            raise self.fail(d, f"{d.name} must be a positive time")
        return seconds

    # --- http_port ---

    def http_port(self, index: int, d: Directive) -> None:
        self.saw_http_port = True
        if not d.args:
            raise self.fail(d, "http_port needs a port, as in `http_port 3128`")
        host, port = self.listen_address(d)
        options = d.args[1:]
        modes = sorted(_NOT_FORWARD_MODES.intersection(options))
        if modes:
            self.warn(
                index,
                d.where,
                f"http_port in {'/'.join(modes)} mode is not a forward proxy listener; "
                "connectproxy only serves explicit CONNECT proxies, so this port is not translated",
            )
            return
        proxy_protocol = "require-proxy-header" in options
        unknown = [o for o in options if o != "require-proxy-header"]
        if "ssl-bump" in unknown:
            self.warn(index, d.where, "ssl-bump ignored: connectproxy never intercepts TLS")
            unknown.remove("ssl-bump")
        if unknown:
            self.warn(index, d.where, f"http_port options ignored: {' '.join(unknown)}")
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if proxy_protocol:
            # Squid's require-proxy-header accepts both PROXY protocol versions.
            self.listen.append({"address": shown, "proxy_protocol": "any"})
        else:
            self.listen.append(shown)

    def listen_address(self, d: Directive) -> tuple[str, int]:
        """Squid's `[host:]port`. A bare port is every IPv4 and IPv6 address, as in Squid: "[::]",
        one dual-stack socket (IPv4 alone on a host without IPv6, server.open_listener)."""
        text = d.args[0]
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            host_text = _EVERY_ADDRESS
        elif host_text.startswith("[") and host_text.endswith("]"):
            host_text = host_text[1:-1]
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise self.fail(d, f"http_port {text!r}: the port must be a number from 1 to 65535")
        if host_text == "localhost":
            host_text = "127.0.0.1"
        try:
            host = str(ipaddress.ip_address(host_text))
        except ValueError:
            raise self.fail(
                d,
                f"http_port {text!r}: the address must be an IP address "
                "(connectproxy does not resolve listen addresses)",
            ) from None
        return host, int(port_text)

    # --- acl ---

    def acl(self, index: int, d: Directive) -> None:
        if len(d.args) < 2:
            raise self.fail(d, "acl needs a name and a type, as in `acl sensors src 10.1.0.0/16`")
        name, squid_type, *rest = d.args
        if name == "manager":
            # Old configs define it; Squid 4+ keeps its built-in and says to remove the line.
            self.warn(index, d.where, "acl manager is built in: this definition is ignored")
            return
        values = self.acl_values(index, d, rest)
        acl_type = _SUPPORTED_TYPES.get(squid_type, "other")
        previous = self.acls.get(name)
        if previous is not None and previous.squid_type != squid_type:
            raise self.fail(
                d, f"acl {name} is already defined with type {previous.squid_type} (Squid refuses)"
            )
        acl = previous or _Acl(name, acl_type, squid_type, defined_at=(index, d.where))
        match acl_type:
            case "src" | "dst":
                nets = self.address_values(index, d, values)
                acl = replace(acl, networks=_collapse((*acl.networks, *nets)))
            case "dstdomain":
                domains = self.domain_values(index, d, values)
                acl = replace(acl, domains=_unique_patterns((*acl.domains, *domains)))
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
                self.warn(
                    index,
                    d.where,
                    f"acl {name}: type {squid_type} is not supported; "
                    "http_access lines that use it are handled as reported below",
                )
        self.acls[name] = acl

    def acl_values(self, index: int, d: Directive, words: list[str]) -> list[str]:
        """Drop Squid's ACL flags: -i/+i (case) and -n (no DNS) change nothing here."""
        position = 0
        while position < len(words) and words[position][:1] in ("-", "+"):
            flag = words[position]
            position += 1
            if flag == "--":
                break
            if flag not in ("-i", "+i", "-n"):
                self.warn(index, d.where, f"acl flag {flag} ignored")
        return words[position:]

    def address_values(self, index: int, d: Directive, values: list[str]) -> list[IPNetwork]:
        nets: list[IPNetwork] = []
        for value in values:
            try:
                nets.extend(_address_value(value))
            except ValueError as error:
                self.warn(index, d.where, f"acl value {value!r} skipped: {error}")
        return nets

    def domain_values(self, index: int, d: Directive, values: list[str]) -> list[DomainPattern]:
        patterns = []
        for value in values:
            try:
                ipaddress.ip_address(value.strip("[]"))
            except ValueError:
                pass
            else:
                self.warn(
                    index,
                    d.where,
                    f"dstdomain value {value!r} skipped: connectproxy refuses IP-address targets "
                    "unless allow.networks lists them",
                )
                continue
            if value.endswith("."):
                # Squid compares dstdomain values literally: one written with a trailing dot
                # never matches, so allowing the undotted name would widen access.
                self.warn(
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
                self.warn(index, d.where, f"dstdomain value {value!r} skipped: {error}")
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
                self.warn(index, d.where, f"port value {value!r} skipped: not a port or range")
                continue
            low, high = int(low_text), int(high_text)
            if not 1 <= low <= high <= 65535:
                self.warn(index, d.where, f"port value {value!r} skipped: outside 1-65535")
                continue
            ports.update(range(low, high + 1))
        return frozenset(ports)

    # --- http_access ---

    def http_access(self, index: int, d: Directive) -> None:
        if not d.args or d.args[0] not in ("allow", "deny"):
            raise self.fail(d, "http_access must be followed by allow or deny")
        if len(d.args) == 1:
            self.warn(index, d.where, "http_access line without ACLs skipped (as Squid does)")
            return
        conditions = []
        for word in d.args[1:]:
            negated = word.startswith("!")
            name = word[1:] if negated else word
            acl = self.acls.get(name)
            if acl is None:
                raise self.fail(d, f"http_access uses acl {name!r}, which is not defined above")
            conditions.append(_Condition(acl, negated))
        self.rules.append(_Rule(d.args[0] == "allow", tuple(conditions), d, index))

    # --- auth_param ---

    def auth_param(self, index: int, d: Directive) -> None:
        if len(d.args) < 2:
            raise self.fail(d, "auth_param needs a scheme and a parameter")
        scheme, parameter, *values = d.args
        if scheme != "basic":
            self.warn(
                index,
                d.where,
                f"auth_param {scheme} ignored: connectproxy only does Basic authentication",
            )
            return
        if parameter == "program":
            self.auth_program(index, d, values)
        elif parameter == "realm":
            self.warn(
                index,
                d.where,
                'auth_param basic realm ignored: connectproxy always uses realm "connectproxy"',
            )
        else:
            self.warn(index, d.where, f"auth_param basic {parameter} ignored")

    def auth_program(self, index: int, d: Directive, values: list[str]) -> None:
        helper = Path(values[0]).name if values else ""
        if helper not in ("basic_ncsa_auth", "ncsa_auth") or len(values) < 2:
            self.warn(
                index,
                d.where,
                "auth_param basic program ignored: only basic_ncsa_auth FILE (an htpasswd file) "
                "can be translated",
            )
            return
        self.htpasswd = (index, d, self.file_path(index, d, values[-1]))

    def file_path(self, index: int, d: Directive, text: str) -> Path:
        """An absolute path: the translated config may be saved anywhere, so a relative path
        is anchored now, against the folder of the file that names it (Squid would use its
        working directory, which a reader of the file cannot see)."""
        path = Path(text)
        if path.is_absolute():
            return path
        anchored = (Path(d.file).parent / path).absolute()
        self.warn(
            index,
            d.where,
            f"relative path {text!r} taken as {anchored} (Squid resolves it against its working "
            "directory)",
        )
        return anchored

    # --- cache_peer ---

    def cache_peer(self, index: int, d: Directive) -> None:
        if len(d.args) < 4:
            raise self.fail(d, "cache_peer needs: hostname type http-port icp-port [options]")
        host, kind, port_text, _icp, *options = d.args
        if kind != "parent":
            self.warn(index, d.where, f"cache_peer of type {kind} ignored: only parents chain")
            return
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise self.fail(d, f"cache_peer port {port_text!r} must be a number from 1 to 65535")
        if "originserver" in options:
            self.warn(index, d.where, "cache_peer originserver ignored: it is not a proxy")
            return
        scheme = "https" if {"ssl", "tls"} & set(options) else "http"
        shown_host = f"[{host}]" if ":" in host else host
        entry: dict[str, Any] = {"url": f"{scheme}://{shown_host}:{port_text}"}
        ignored = []
        for option in options:
            key, _, value = option.partition("=")
            if key == "login":
                self.peer_login(index, d, value, entry)
            elif key in _PEER_FILE_OPTIONS and value:
                entry[_PEER_FILE_OPTIONS[key]] = str(self.file_path(index, d, value))
            elif option in ("ssl", "tls", "round-robin") or key == "name":
                continue
            elif option not in _HARMLESS_PEER_OPTIONS:
                ignored.append(key)  # the name only: values may be secrets
        if ignored:
            self.warn(index, d.where, f"cache_peer options ignored: {' '.join(ignored)}")
        self.peers.append(_Peer(d, index, entry, "round-robin" in options))

    def peer_login(self, index: int, d: Directive, value: str, entry: dict[str, Any]) -> None:
        user, sep, password = value.partition(":")
        if value in ("PASS", "PASSTHRU", "PROXYPASS", "NEGOTIATE") or not sep or user in ("", "*"):
            self.warn(
                index,
                d.where,
                f"cache_peer login={value.split(':')[0]} ignored: connectproxy only sends "
                "fixed credentials (login=user:password) to an upstream",
            )
            return
        entry["username"] = user
        entry["password"] = password
        self.warn(
            index,
            d.where,
            "the upstream password is written inline in the translated config; move it to a "
            "file and set password_file instead",
        )

    # --- building the configuration ---

    def build(self) -> dict[str, Any]:
        if self.saw_http_port and not self.listen:
            raise SquidImportError(
                f"{self.source}: no http_port can be translated (see the warnings); "
                "connectproxy needs at least one forward-proxy listener"
            )
        mapping: dict[str, Any] = {}
        mapping["listen"] = self.listen or [f"[{_EVERY_ADDRESS}]:{_DEFAULT_LISTEN_PORT}"]
        terms = self.terms()
        clients, use_htpasswd = self.admission(terms)
        self.note_unused_sources()
        domains, ports = self.allowlist(terms)
        mapping["allow"] = {"ports": sorted(ports), "domains": [p.text for p in domains]}
        mapping["clients"] = clients
        if use_htpasswd and self.htpasswd is not None:
            mapping["htpasswd_file"] = str(self.htpasswd[2])
        elif self.htpasswd is not None:
            index, d, _ = self.htpasswd
            self.warn(
                index,
                d.where,
                "no http_access allow line uses a proxy_auth acl, so the password file is unused",
            )
        if self.extra_denied:
            # Setting the key replaces the defaults, so they are written out first (without
            # their IPv4-mapped forms: connectproxy checks a mapped address as IPv4 anyway).
            defaults = [n for n in DEFAULT_DENY_NETWORKS if not _ipv4_mapped(n)]
            denied = (*defaults, *_collapse(self.extra_denied))
            mapping["destinations"] = {"deny_networks": [_net_text(n) for n in denied]}
        upstream = self.upstream()
        if upstream is not None:
            mapping["upstream"] = upstream
        if self.timeouts:
            mapping["timeouts"] = {k: _number(v) for k, v in self.timeouts.items()}
        return mapping

    # --- http_access lines → terms ---

    def terms(self) -> list[_Term]:
        """The allow lines as connectproxy applies them, each narrowed by the denies above it."""
        terms: list[_Term] = []
        denies: list[tuple[_Rule, _Match]] = []
        rules = list(self.rules)
        if rules and not rules[-1].allow:
            # Squid: when no line matches, the answer is the opposite of the last line's.
            last = rules[-1]
            rules.append(replace(last, allow=True, conditions=(), implicit=True))
        elif not rules:
            index, where = self.end
            self.warn(
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
                    self.warn_rule(
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

    def note_unreachable(self, final: _Rule, later: list[_Rule]) -> None:
        """Lines after `deny all` do nothing, in Squid as here; sensors appended at the end of
        squid.conf are a classic mistake worth pointing at."""
        for rule in later:
            if not rule.implicit:
                self.warn_rule(
                    rule,
                    f"never reached: {final.text} at {final.directive.where} answers every "
                    "request before it (as in Squid)",
                )

    def match_of(self, rule: _Rule) -> _Match | None:
        """The CONNECT requests `rule` matches, or None if it can never match one.

        A condition connectproxy cannot evaluate makes an allow line match nothing (stricter)
        and a deny line be skipped (reported as wider than Squid).
        """
        match = _Match()
        for condition in rule.conditions:
            acl, negated = condition.acl, condition.negated
            if acl.type == "src":
                nets = _complement(acl.networks) if negated else acl.networks
                if nets == _ANYWHERE:
                    continue  # `all`: always true
                joined = nets if match.sources is None else _intersect(match.sources, nets)
                match = replace(match, sources=joined)
            elif acl.type == "method":
                if ("CONNECT" in acl.methods) == negated:
                    return None
            elif acl.type == "manager":
                if not negated:
                    return None  # cache manager requests are never CONNECT
            elif acl.type == "port":
                ports = _ALL_PORTS - acl.ports if negated else acl.ports
                joined_ports = ports if match.ports is None else match.ports & ports
                match = replace(match, ports=joined_ports)
            elif acl.type == "dstdomain":
                if negated:
                    excluded = (*match.except_domains, *acl.domains)
                    match = replace(match, except_domains=excluded)
                else:
                    patterns = acl.domains
                    if match.domains is not None:
                        patterns = _intersect_patterns(match.domains, patterns)
                    match = replace(match, domains=patterns)
            elif acl.type == "proxy_auth" and rule.allow and not negated:
                users = _Users(acl.users)
                joined_users = users if match.users is None else match.users.intersect(users)
                match = replace(match, users=joined_users)
            elif acl.type == "proxy_auth" and not rule.allow and negated and match.users is None:
                # `deny !auth`: refuses whoever is not (one of) these users.
                match = replace(match, users=_Users(acl.users), users_negated=True)
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

    def unsupported(self, rule: _Rule, condition: _Condition) -> None:
        what = f"{condition.text} (acl type {condition.acl.squid_type})"
        if rule.allow:
            self.warn_rule(
                rule,
                f"line ignored: connectproxy cannot evaluate {what} here, so nothing is "
                "allowed through this line (stricter than Squid)",
            )
        else:
            self.warn_rule(
                rule,
                f"line NOT enforced: connectproxy cannot evaluate {what} here; requests Squid "
                "refused with it may be let through (the allowlist still applies)",
            )

    def refuse_destinations(self, rule: _Rule, networks: tuple[IPNetwork, ...]) -> None:
        """`allow ... !dst_acl`: those destinations are refused for every client instead."""
        extra = _subtract(_collapse(networks), DEFAULT_DENY_NETWORKS)
        if extra:
            self.extra_denied.extend(extra)
            self.warn_rule(
                rule,
                "destination networks "
                + ", ".join(_net_text(n) for n in extra)
                + " are added to destinations.deny_networks, for every client",
            )

    def deny_destinations(self, rule: _Rule, match: _Match) -> None:
        """`deny ... dst_acl` (e.g. to_localhost) becomes destinations.deny_networks."""
        extra = _subtract(_collapse(match.destinations), DEFAULT_DENY_NETWORKS)
        if not extra:
            return  # already refused by connectproxy's default deny_networks
        self.extra_denied.extend(extra)
        if match.dimensions():
            scope = "Squid refused them only for the requests this line matches"
        elif any(r.allow and r.index < rule.index for r in self.rules):
            scope = "also for the allow lines above this one, which Squid let reach them"
        else:
            return  # exactly what Squid does
        networks = ", ".join(_net_text(n) for n in extra)
        self.warn_rule(
            rule,
            f"destination networks {networks} are added to destinations.deny_networks and "
            f"refused for every client ({scope})",
        )

    def apply_denies(
        self, rule: _Rule, match: _Match, denies: list[tuple[_Rule, _Match]]
    ) -> _Term | None:
        """Take away from an allow line what the deny lines above it refuse."""
        for deny, refused in denies:
            if _disjoint(match, refused):
                continue
            # A deny with no conditions ended the walk in terms(), so there is one at least.
            dimensions = refused.dimensions()
            dimension = dimensions[0]
            if len(dimensions) > 1:
                self.warn_rule(
                    deny,
                    f"refuses only requests matching all its acls, which connectproxy cannot "
                    f"express; for {rule.text} it refuses every request with those {dimension} "
                    "(stricter than Squid)",
                )
            narrowed = _subtract_dimension(match, refused, dimension)
            if narrowed is None:
                return None
            match = narrowed
        client = _client_name(rule)
        return _Term(rule, match, client)

    # --- admission ---

    def admission(self, terms: list[_Term]) -> tuple[list[dict[str, Any]], bool]:
        """`clients` from the lines that admit by address; whether the htpasswd file is needed."""
        networks: dict[str, list[IPNetwork]] = {}
        use_htpasswd = False
        for term in terms:
            match, rule = term.match, term.rule
            if match.users is not None:
                use_htpasswd = self.password_admission(term) or use_htpasswd
                continue
            sources = _ANYWHERE if match.sources is None else match.sources
            networks.setdefault(term.client, []).extend(sources)
            everyone = " and ".join(_net_text(n) for n in sources if n.prefixlen == 0)
            if everyone:
                because = "this line has no src acl, so" if term.client == "any" else "its src acl:"
                self.warn_rule(
                    rule,
                    f"{because} ANY source address is admitted without a password (client "
                    f"{term.client!r}: {everyone}); restrict it to your sensors' networks",
                )
        clients = [
            {"name": name, "networks": [_net_text(n) for n in _collapse(nets)]}
            for name, nets in networks.items()
        ]
        return clients, use_htpasswd

    def note_unused_sources(self) -> None:
        """A src acl no http_access line uses admits nobody, in Squid as here. Saying so
        explains, for example, why Debian's stock `localnet` is not a client."""
        used = {c.acl.name for rule in self.rules for c in rule.conditions}
        for acl in self.acls.values():
            if acl.type == "src" and acl.defined_at is not None and acl.name not in used:
                index, where = acl.defined_at
                self.warn(
                    index,
                    where,
                    f"acl {acl.name} is not used by any http_access line, so its addresses are "
                    "not admitted (as in Squid)",
                )

    def password_admission(self, term: _Term) -> bool:
        """A proxy_auth line admits the users of the htpasswd file; say what that loses."""
        match, rule = term.match, term.rule
        if self.htpasswd is None:
            self.warn_rule(
                rule,
                "needs a password, but there is no `auth_param basic program basic_ncsa_auth "
                "FILE` to translate: nobody is admitted by password (stricter than Squid)",
            )
            return False
        password_file = self.htpasswd[2]
        if match.users is not None and match.users.names is not None:
            names = ", ".join(sorted(match.users.names))
            self.warn_rule(
                rule,
                f"Squid admitted only the users {names}; connectproxy admits every user in "
                f"{password_file}: remove the others from that file",
            )
        if match.sources is not None:
            self.warn_rule(
                rule,
                f"Squid admitted these users only from {term.client}; connectproxy admits "
                f"users of {password_file} from any address",
            )
        return True

    # --- the allowlist ---

    def allowlist(self, terms: list[_Term]) -> tuple[list[DomainPattern], frozenset[int]]:
        """allow.domains and allow.ports, with every way they differ from Squid reported."""
        named = _unique_patterns(p for t in terms if t.match.domains for p in t.match.domains)
        open_terms = [t for t in terms if t.match.domains is None]
        if named:
            for term in open_terms:
                self.warn_rule(
                    term.rule,
                    "Squid lets this line reach any host; connectproxy limits it to allow.domains "
                    "(the dstdomain acls of the other allow lines)",
                )
            domains = list(named)
        else:
            for term in open_terms:
                self.warn_rule(
                    term.rule,
                    "Squid lets this line reach any host; no allow line names a dstdomain acl, "
                    "so allow.domains is the Defender for IoT allowlist: "
                    + ", ".join(DEFENDER_ALLOWLIST),
                )
            domains = [parse_domain_pattern(text) for text in DEFENDER_ALLOWLIST]
        domains = self.apply_exceptions(terms, domains)
        if not domains and terms:
            self.warn_rule(terms[0].rule, "allow.domains ends up empty: no host is reachable")
        term_ports = {id(t): self.term_ports(t) for t in terms}
        ports = frozenset(p for allowed in term_ports.values() for p in allowed)
        if not terms:
            ports = frozenset({_TLS_PORT})
        self.plain_http_note(terms)
        self.check_widening(terms, domains, term_ports, ports)
        return domains, ports

    def apply_exceptions(
        self, terms: list[_Term], domains: list[DomainPattern]
    ) -> list[DomainPattern]:
        """Hosts a line excludes: drop allowlist entries they cover, report the rest."""
        kept = list(domains)
        for term in terms:
            for excluded in term.match.except_domains:
                for allowed in list(kept):
                    if _covers(excluded, allowed):
                        kept.remove(allowed)
                        self.warn_rule(
                            term.rule,
                            f"{allowed.text} is refused for this line, so it is removed from "
                            "allow.domains for every client",
                        )
                    elif _covers(allowed, excluded):
                        self.warn_rule(
                            term.rule,
                            f"Squid refuses {excluded.text} for this line, but connectproxy "
                            f"cannot make an exception inside {allowed.text}: those hosts "
                            "are reachable (wider than Squid)",
                        )
        return kept

    def term_ports(self, term: _Term) -> frozenset[int]:
        """The ports a line allows, narrowed to what allow.ports can reasonably list."""
        ports = term.match.ports
        connect_rule = self.connect_ports_rule()
        narrowed = connect_rule[1] if connect_rule is not None else frozenset({_TLS_PORT})
        shown = ", ".join(str(p) for p in sorted(narrowed)[:20])
        if ports is None:
            if connect_rule is not None:
                self.warn_rule(
                    term.rule,
                    f"this line comes before {connect_rule[0].text} "
                    f"({connect_rule[0].directive.where}), so Squid tunnels to ANY port for it; "
                    f"connectproxy allows only ports {shown}",
                )
            else:
                self.warn_rule(
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
            self.warn_rule(
                term.rule,
                f"Squid allows {len(ports)} ports here; connectproxy lists only "
                f"{', '.join(str(p) for p in sorted(kept))}",
            )
            return kept
        return ports

    def connect_ports_rule(self) -> tuple[_Rule, frozenset[int]] | None:
        """The `deny CONNECT !SSL_ports` line (whatever the port acl's name) and its ports."""
        for rule in self.rules:
            if rule.allow or len(rule.conditions) != 2:
                continue
            method = [c for c in rule.conditions if c.acl.type == "method" and not c.negated]
            port = [c for c in rule.conditions if c.acl.type == "port" and c.negated]
            if method and port and "CONNECT" in method[0].acl.methods:
                return rule, port[0].acl.ports
        return None

    def plain_http_note(self, terms: list[_Term]) -> None:
        """Squid forwards plain HTTP for a line not limited to CONNECT; say it once."""
        for term in terms:
            limited = any(
                c.acl.type == "method" and not c.negated and c.acl.methods == {"CONNECT"}
                for c in term.rule.conditions
            )
            if not limited:
                self.warn_rule(
                    term.rule,
                    "Squid also forwards plain-HTTP requests (GET http://...) this line allows; "
                    "connectproxy only tunnels CONNECT and answers 405 to anything else",
                )
                return

    def check_widening(
        self,
        terms: list[_Term],
        domains: list[DomainPattern],
        term_ports: dict[int, frozenset[int]],
        ports: frozenset[int],
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
                            or any(_covers(p, pattern) for p in other.match.domains)
                        )
                        for other in covering
                    )
                    if not reached:
                        missing_domains.add(pattern.text)
                        missing_ports.add(port)
            if missing_domains:
                who = "its users" if term.match.users is not None else f"client {term.client!r}"
                self.warn_rule(
                    term.rule,
                    f"in Squid {who} could not reach every allowlist entry on every allowed port; "
                    "connectproxy has one allowlist for all clients, so it now also reaches "
                    f"{', '.join(sorted(missing_domains))} (ports "
                    f"{', '.join(str(p) for p in sorted(missing_ports))}) — wider than Squid",
                )

    # --- upstream ---

    def upstream(self) -> dict[str, Any] | None:
        for index, d in self.never_direct:
            if not self.peers:
                self.warn(
                    index,
                    d.where,
                    "never_direct without a cache_peer parent: Squid could forward nothing; "
                    "connectproxy connects directly",
                )
            elif d.args != ("allow", "all"):
                self.warn(
                    index,
                    d.where,
                    "never_direct translated as `never_direct allow all`: every tunnel goes "
                    "through the upstream",
                )
        if not self.peers:
            return None
        if not self.never_direct:
            first = self.peers[0]
            self.warn(
                first.index,
                first.directive.where,
                "no `never_direct allow all`: Squid may connect directly (for example when the "
                "parent is down); connectproxy sends every tunnel through the upstream",
            )
        upstream: dict[str, Any] = {"proxies": [peer.entry for peer in self.peers]}
        if any(peer.round_robin for peer in self.peers):
            upstream["strategy"] = "round_robin"
        return upstream


# --- policy helpers ---------------------------------------------------------------------------


def _client_name(rule: _Rule) -> str:
    """Named after the line's src acls (`sensor1`, `localnet`), `any` when it has none."""
    parts = [
        ("not-" if c.negated else "") + c.acl.name
        for c in rule.conditions
        if c.acl.type == "src" and c.acl.networks != _ANYWHERE
    ]
    return "-".join(parts) if parts else "any"


def _disjoint(allowed: _Match, refused: _Match) -> bool:
    """True when no request matches both: the deny line cannot affect the allow line."""
    sources_apart = allowed.sources is not None and refused.sources is not None
    if sources_apart and not _intersect(allowed.sources or (), refused.sources or ()):
        return True
    if (
        allowed.ports is not None
        and refused.ports is not None
        and not allowed.ports & refused.ports
    ):
        return True
    if allowed.domains is not None:
        if refused.domains is not None and not any(
            _covers(a, r) or _covers(r, a) for a in allowed.domains for r in refused.domains
        ):
            return True
        if refused.except_domains and all(
            any(_covers(e, a) for e in refused.except_domains) for a in allowed.domains
        ):
            return True
    if refused.users is not None and refused.users_negated and allowed.users is not None:
        return refused.users.includes(allowed.users)
    return False


def _subtract_dimension(allowed: _Match, refused: _Match, dimension: str) -> _Match | None:
    """`allowed` minus every request with `refused`'s value of one dimension (None: nothing left).

    When `refused` constrains only this dimension the result is exact; otherwise it is stricter
    than Squid, which the caller reports.
    """
    if dimension == "ports":
        assert refused.ports is not None
        ports = (allowed.ports if allowed.ports is not None else _ALL_PORTS) - refused.ports
        return replace(allowed, ports=ports) if ports else None
    if dimension == "sources":
        assert refused.sources is not None
        sources = _subtract(
            allowed.sources if allowed.sources is not None else _ANYWHERE, refused.sources
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
            kept = _intersect_patterns(allowed.domains, kept)
        return replace(allowed, domains=kept) if kept else None
    assert refused.domains is not None
    if allowed.domains is None:
        return replace(allowed, except_domains=(*allowed.except_domains, *refused.domains))
    remaining = tuple(a for a in allowed.domains if not any(_covers(r, a) for r in refused.domains))
    inside = tuple(
        r for r in refused.domains for a in remaining if _covers(a, r) and not _covers(r, a)
    )
    if not remaining:
        return None
    return replace(allowed, domains=remaining, except_domains=(*allowed.except_domains, *inside))


def _admits_all_of(wide: _Match, narrow: _Match) -> bool:
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
    return not _subtract(narrow.sources, wide.sources)


# --- domain patterns --------------------------------------------------------------------------


def _covers(outer: DomainPattern, inner: DomainPattern) -> bool:
    """Whether every host `inner` matches is matched by `outer`."""
    if outer.kind == "exact":
        return inner.kind == "exact" and inner.domain == outer.domain
    if inner.domain == outer.domain:
        return outer.kind == "suffix" or inner.kind == "subdomains"
    return inner.domain.endswith("." + outer.domain)


def _intersect_patterns(
    first: Iterable[DomainPattern], second: Iterable[DomainPattern]
) -> tuple[DomainPattern, ...]:
    """Hosts matched by both lists (two ACLs ANDed on one line). Domain trees nest, so each
    pair either nests, and the inner pattern is the overlap, or does not overlap at all."""
    second = tuple(second)
    found = []
    for a in first:
        for b in second:
            if _covers(a, b):
                found.append(b)
            elif _covers(b, a):
                found.append(a)
    return _unique_patterns(found)


def _unique_patterns(patterns: Iterable[DomainPattern]) -> tuple[DomainPattern, ...]:
    seen: dict[str, DomainPattern] = {}
    for pattern in patterns:
        seen.setdefault(pattern.text, pattern)
    return tuple(seen.values())


# --- address values and network sets ----------------------------------------------------------


def _address_value(value: str) -> list[IPNetwork]:
    """One src/dst value: `all`, an address, `addr/prefix`, `addr/mask`, `a-b` or `a-b/mask`."""
    if value == "all":
        return list(_ANYWHERE)
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


def _split(
    nets: Iterable[IPNetwork],
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return v4, v6


def _collapse(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4, v6 = _split(nets)
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def _intersect(first: Iterable[IPNetwork], second: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    a4, a6 = _split(first)
    b4, b6 = _split(second)
    return _collapse((*_family_intersect(a4, b4), *_family_intersect(a6, b6)))


def _subtract(first: Iterable[IPNetwork], second: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    a4, a6 = _split(first)
    b4, b6 = _split(second)
    return _collapse((*_family_subtract(a4, b4), *_family_subtract(a6, b6)))


def _complement(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return _subtract(_ANYWHERE, nets)


def _family_intersect(first: list[_N], second: list[_N]) -> list[_N]:
    """CIDR blocks either nest or are disjoint, so the overlap of two is the smaller one."""
    found = []
    for a in first:
        for b in second:
            if a.subnet_of(b):
                found.append(a)
            elif b.subnet_of(a):
                found.append(b)
    return found


def _family_subtract(first: list[_N], second: list[_N]) -> list[_N]:
    remaining = list(first)
    for cut in second:
        next_round: list[_N] = []
        for block in remaining:
            if block.subnet_of(cut):
                continue
            if cut.subnet_of(block):
                next_round.extend(block.address_exclude(cut))
            else:
                next_round.append(block)
        remaining = next_round
    return remaining


def _ipv4_mapped(net: IPNetwork) -> bool:
    return isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None


def _net_text(net: IPNetwork) -> str:
    """A single address without its /32 or /128, as operators write it."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value
