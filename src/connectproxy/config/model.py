"""The validated, immutable configuration model.

Everything the proxy decides is a pure function of one `Config` value. Objects here are frozen
so a reload can swap the whole policy atomically: a tunnel that started under the old config keeps
its reference, new requests see the new one, and nothing is ever half-updated.

Loading YAML (with line numbers in errors) lives in `connectproxy.configfile`; this module only
says what a valid configuration *is*.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from connectproxy.matching.domains import DomainIndex, DomainPattern
from connectproxy.matching.netset import IPAddress, IPNetwork, NetworkIndex, NetworkSet

ProxyProtocolMode = Literal["off", "v1", "v2", "any"]
AllowMode = Literal["enforce", "report"]
TLSMode = Literal["off", "observe", "require", "verify_sni"]
Strategy = Literal["failover", "round_robin"]
LogFormat = Literal["json", "console"]
AccessFormat = Literal["json", "squid"]

# The policy `allow` defines, and the one a client or user that names none is bound to.
DEFAULT_POLICY = "default"
DEFAULT_POLICIES: tuple[str, ...] = (DEFAULT_POLICY,)


@dataclass(frozen=True)
class ListenerTLS:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    proxy_protocol: ProxyProtocolMode = "off"
    tls: ListenerTLS | None = None

    @functools.cached_property
    def address(self) -> str:
        """Cached: it goes into every access record, and formatting it each time cost a tenth of
        a microsecond per connection (the frozen fields never change)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Policy:
    """A named destination rule set (SPEC section 3.2); `allow` is the one named `default`.

    The fields are what the config says; `domain_index` and `network_set` are built from them
    when the policy is made, so each config load pays for them once and no request does.
    Omitted fields are the built-in defaults, never another policy's values.
    """

    name: str = DEFAULT_POLICY
    ports: frozenset[int] = frozenset({443})
    domains: tuple[DomainPattern, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    mode: AllowMode = "enforce"
    # The TLS guard's check of the tunnel's first bytes (SPEC section 5.1, policy/tlsguard.py).
    tls: TLSMode = "off"
    domain_index: DomainIndex = field(init=False, repr=False, compare=False)
    network_set: NetworkSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain_index", DomainIndex(self.domains))
        object.__setattr__(self, "network_set", NetworkSet(self.networks))


# The model's name until policies were named: the loader and existing code build `allow` with it.
Allow = Policy


@dataclass(frozen=True)
class Client:
    """Admitted without a password: by source network or verified certificate name."""

    name: str
    networks: tuple[IPNetwork, ...] = ()
    tls_names: tuple[str, ...] = ()
    policies: tuple[str, ...] = DEFAULT_POLICIES  # names, tried in this order

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        """`networks` as a NetworkSet: every connection's source is checked against it, and
        `address in network` runs in Python (see netset.py). Built once, on first use; `User`
        keeps its own the same way, and `Policy` builds its own when it is made."""
        return NetworkSet(self.networks)


@dataclass(frozen=True)
class User:
    """Admitted by Basic credentials; `networks` empty means from anywhere. `password_hash`
    None: the password is the one the htpasswd file holds for `name` (the file is read again
    when it changes), and this entry only binds the user's policies and networks."""

    name: str
    password_hash: str | None = field(repr=False)
    networks: tuple[IPNetwork, ...] = ()
    policies: tuple[str, ...] = DEFAULT_POLICIES  # names, tried in this order

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        return NetworkSet(self.networks)


@dataclass(frozen=True)
class UpstreamProxy:
    url: str
    scheme: Literal["http", "https"]
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def name(self) -> str:
        """Label for metrics and logs: never carries credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    proxies: tuple[UpstreamProxy, ...] = ()
    strategy: Strategy = "failover"
    direct_domains: tuple[DomainPattern, ...] = ()
    direct_index: DomainIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direct_index", DomainIndex(self.direct_domains))


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Destinations no tunnel may reach, whatever DNS says. IPv4 forms embedded in IPv6 (mapped,
# NAT64, 6to4, Teredo) are unwrapped and checked against the IPv4 entries by `addresses.py`,
# so only the plain forms need to be listed; ::ffff:0:0/96 mapped forms of the IPv4 entries
# are listed too so an operator reading the effective config sees them.
DEFAULT_DENY_NETWORKS: tuple[IPNetwork, ...] = _nets(
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
    "::ffff:0.0.0.0/104",
    "::ffff:127.0.0.0/104",
    "::ffff:169.254.0.0/112",
    "::ffff:224.0.0.0/100",
    "::ffff:240.0.0.0/100",
)


@dataclass(frozen=True)
class Destinations:
    deny_networks: tuple[IPNetwork, ...] = DEFAULT_DENY_NETWORKS
    # name (normalised) -> addresses, consulted before DNS. A tuple of pairs keeps it hashable
    # and immutable; `lookup_host` gives dict-like access.
    hosts: tuple[tuple[str, tuple[IPAddress, ...]], ...] = ()

    @functools.cached_property
    def deny_set(self) -> NetworkSet:
        """`deny_networks` as the NetworkSet every resolved address is checked against: built
        once per config, on first use."""
        return NetworkSet(self.deny_networks)

    def lookup_host(self, name: str) -> tuple[IPAddress, ...] | None:
        for key, addrs in self.hosts:
            if key == name:
                return addrs
        return None


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0
    connect: float = 10.0
    idle: float = 900.0
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10000
    max_connections_per_source: int = 256
    max_request_bytes: int = 8192


@dataclass(frozen=True)
class Metrics:
    """`host`/`port` of the metrics listener; `None` when disabled."""

    host: str | None = "127.0.0.1"
    port: int | None = 9128

    @property
    def enabled(self) -> bool:
        return self.host is not None and self.port is not None


@dataclass(frozen=True)
class Admin:
    """The admin API on the metrics listener (SPEC section 7.1): served only when `token_file`
    is set. `token` is that file's one line, read when the config is loaded, so a reload that
    re-reads the config re-reads the token too. Never in a repr, a log line or a summary."""

    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class Reload:
    """What a successful SIGHUP does besides swapping the config for new requests."""

    # Re-decide every open tunnel under the new config and close those it refuses.
    close_denied: bool = False


@dataclass(frozen=True)
class Log:
    level: str = "info"
    format: LogFormat = "json"
    access_log: str = "-"
    access_format: AccessFormat = "json"


@dataclass(frozen=True)
class Config:
    """One whole configuration.

    `policies` maps every policy name to its `Policy`, `default` first: the model builds that
    entry from `allow`, so a config that names no policy means what it always meant, and
    `dataclasses.replace(config, allow=...)` changes the default policy as expected. Any
    `default` given in `policies` is replaced by `allow` (the loader refuses one in YAML). Every
    name a client or user is bound to must be defined: a config that says otherwise cannot be
    made.
    """

    # Every IPv4 and IPv6 address, as Squid listens (server.listening.open_listener).
    listen: tuple[Listener, ...] = (Listener("::", 3128),)
    allow: Policy = Policy()
    # Not hashed: a mapping is not hashable, and the policies are a function of the other fields.
    policies: Mapping[str, Policy] = field(default_factory=dict, hash=False)
    clients: tuple[Client, ...] = ()
    users: tuple[User, ...] = ()
    htpasswd_file: Path | None = None
    upstream: Upstream | None = None
    destinations: Destinations = Destinations()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    metrics: Metrics = Metrics()
    log: Log = Log()
    admin: Admin = Admin()
    reload: Reload = Reload()
    # Where this config came from ("<embedded default>" or a path), for messages.
    source: str = "<embedded default>"
    # Non-fatal findings of the loader (e.g. inline upstream password); logged at start-up.
    warnings: tuple[str, ...] = ()
    users_by_name: Mapping[str, User] = field(init=False, repr=False, compare=False)
    # Whether any policy is in report mode: then every access line carries `would_deny`.
    report_mode: bool = field(init=False, repr=False, compare=False)
    # Whether Basic credentials are checked at all: only with `users` or an `htpasswd_file`.
    # Without either, a Proxy-Authorization header is ignored, as Squid ignores it when no
    # proxy_auth acl is reached (docs/configuration.md, "How the keys combine").
    checks_credentials: bool = field(init=False, repr=False, compare=False)
    # Whether any policy has a TLS guard: then every access line carries sni, tls_version, alpn
    # and ja4 (SPEC 5.1).
    tls_guard: bool = field(init=False, repr=False, compare=False)
    # Admission's indexes of `clients`, by position: the first client holding a source network,
    # the first listing a certificate name.
    client_networks: NetworkIndex = field(init=False, repr=False, compare=False)
    client_tls_names: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = self.allow
        if default.name != DEFAULT_POLICY:
            default = replace(default, name=DEFAULT_POLICY)
            object.__setattr__(self, "allow", default)
        policies: dict[str, Policy] = {DEFAULT_POLICY: default}
        for name, policy in self.policies.items():
            if name == DEFAULT_POLICY:
                continue
            if policy.name != name:
                raise ValueError(f"policy {policy.name!r} is filed under the name {name!r}")
            policies[name] = policy
        object.__setattr__(self, "policies", MappingProxyType(policies))
        report_mode = any(policy.mode == "report" for policy in policies.values())
        object.__setattr__(self, "report_mode", report_mode)
        checks = bool(self.users) or self.htpasswd_file is not None
        object.__setattr__(self, "checks_credentials", checks)
        tls_guard = any(policy.tls != "off" for policy in policies.values())
        object.__setattr__(self, "tls_guard", tls_guard)
        for kind, identities in (("client", self.clients), ("user", self.users)):
            for identity in identities:
                for name in identity.policies:
                    if name not in policies:
                        raise ValueError(
                            f"{kind} {identity.name!r} is bound to policy {name!r}, "
                            "which is not defined"
                        )
        # Admission by credentials looks the user up by name on every such connection; the
        # first entry of a name wins, as the list read in order would.
        by_name: dict[str, User] = {}
        for user in self.users:
            by_name.setdefault(user.name, user)
        object.__setattr__(self, "users_by_name", MappingProxyType(by_name))
        numbered = ((net, i) for i, client in enumerate(self.clients) for net in client.networks)
        object.__setattr__(self, "client_networks", NetworkIndex(numbered))
        tls_names: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            for tls_name in client.tls_names:
                tls_names.setdefault(tls_name, i)
        object.__setattr__(self, "client_tls_names", MappingProxyType(tls_names))
