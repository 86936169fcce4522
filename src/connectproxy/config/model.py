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
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from connectproxy.config.frozen import Frozen, replace
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


class ListenerTLS(Frozen):
    _fields = ("cert_file", "key_file", "client_ca_file", "require_client_cert")

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    require_client_cert: bool

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self._set(
            cert_file=cert_file,
            key_file=key_file,
            client_ca_file=client_ca_file,
            require_client_cert=require_client_cert,
        )


class Listener(Frozen):
    _fields = ("host", "port", "proxy_protocol", "tls")

    host: str
    port: int
    proxy_protocol: ProxyProtocolMode
    tls: ListenerTLS | None

    def __init__(
        self,
        host: str,
        port: int,
        proxy_protocol: ProxyProtocolMode = "off",
        tls: ListenerTLS | None = None,
    ) -> None:
        self._set(host=host, port=port, proxy_protocol=proxy_protocol, tls=tls)

    @functools.cached_property
    def address(self) -> str:
        """Cached: it goes into every access record, and formatting it each time cost a tenth of
        a microsecond per connection (the frozen fields never change)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Policy(Frozen):
    """A named destination rule set (SPEC section 3.2); `allow` is the one named `default`.

    The fields are what the config says; `domain_index` and `network_set` are built from them
    when the policy is made, so each config load pays for them once and no request does.
    Omitted fields are the built-in defaults, never another policy's values.
    """

    _fields = ("name", "ports", "domains", "networks", "mode", "tls")

    name: str
    ports: frozenset[int]
    domains: tuple[DomainPattern, ...]
    networks: tuple[IPNetwork, ...]
    mode: AllowMode
    # The TLS guard's check of the tunnel's first bytes (SPEC section 5.1, policy/tlsguard.py).
    tls: TLSMode
    domain_index: DomainIndex
    network_set: NetworkSet

    def __init__(
        self,
        name: str = DEFAULT_POLICY,
        ports: frozenset[int] = frozenset({443}),
        domains: tuple[DomainPattern, ...] = (),
        networks: tuple[IPNetwork, ...] = (),
        mode: AllowMode = "enforce",
        tls: TLSMode = "off",
    ) -> None:
        self._set(
            name=name,
            ports=ports,
            domains=domains,
            networks=networks,
            mode=mode,
            tls=tls,
            domain_index=DomainIndex(domains),
            network_set=NetworkSet(networks),
        )


# The model's name until policies were named: the loader and existing code build `allow` with it.
Allow = Policy


class Client(Frozen):
    """Admitted without a password: by source network or verified certificate name."""

    _fields = ("name", "networks", "tls_names", "policies")

    name: str
    networks: tuple[IPNetwork, ...]
    tls_names: tuple[str, ...]
    policies: tuple[str, ...]  # names, tried in this order

    def __init__(
        self,
        name: str,
        networks: tuple[IPNetwork, ...] = (),
        tls_names: tuple[str, ...] = (),
        policies: tuple[str, ...] = DEFAULT_POLICIES,
    ) -> None:
        self._set(name=name, networks=networks, tls_names=tls_names, policies=policies)

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        """`networks` as a NetworkSet: every connection's source is checked against it, and
        `address in network` runs in Python (see netset.py). Built once, on first use; `User`
        keeps its own the same way, and `Policy` builds its own when it is made."""
        return NetworkSet(self.networks)


class User(Frozen):
    """Admitted by Basic credentials; `networks` empty means from anywhere. `password_hash`
    None: the password is the one the htpasswd file holds for `name` (the file is read again
    when it changes), and this entry only binds the user's policies and networks."""

    _fields = ("name", "password_hash", "networks", "policies")
    _unshown = frozenset({"password_hash"})

    name: str
    password_hash: str | None
    networks: tuple[IPNetwork, ...]
    policies: tuple[str, ...]  # names, tried in this order

    def __init__(
        self,
        name: str,
        password_hash: str | None,
        networks: tuple[IPNetwork, ...] = (),
        policies: tuple[str, ...] = DEFAULT_POLICIES,
    ) -> None:
        self._set(name=name, password_hash=password_hash, networks=networks, policies=policies)

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        return NetworkSet(self.networks)


class UpstreamProxy(Frozen):
    _fields = (
        "url",
        "scheme",
        "host",
        "port",
        "username",
        "password",
        "ca_file",
        "cert_file",
        "key_file",
    )
    _unshown = frozenset({"password"})

    url: str
    scheme: Literal["http", "https"]
    host: str
    port: int
    username: str | None
    password: str | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None

    def __init__(
        self,
        url: str,
        scheme: Literal["http", "https"],
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self._set(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )

    @property
    def name(self) -> str:
        """Label for metrics and logs: never carries credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class Upstream(Frozen):
    _fields = ("proxies", "strategy", "direct_domains")

    proxies: tuple[UpstreamProxy, ...]
    strategy: Strategy
    direct_domains: tuple[DomainPattern, ...]
    direct_index: DomainIndex

    def __init__(
        self,
        proxies: tuple[UpstreamProxy, ...] = (),
        strategy: Strategy = "failover",
        direct_domains: tuple[DomainPattern, ...] = (),
    ) -> None:
        self._set(
            proxies=proxies,
            strategy=strategy,
            direct_domains=direct_domains,
            direct_index=DomainIndex(direct_domains),
        )


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


class Destinations(Frozen):
    _fields = ("deny_networks", "hosts")

    deny_networks: tuple[IPNetwork, ...]
    # name (normalised) -> addresses, consulted before DNS. A tuple of pairs keeps it hashable
    # and immutable; `lookup_host` gives dict-like access.
    hosts: tuple[tuple[str, tuple[IPAddress, ...]], ...]

    def __init__(
        self,
        deny_networks: tuple[IPNetwork, ...] = DEFAULT_DENY_NETWORKS,
        hosts: tuple[tuple[str, tuple[IPAddress, ...]], ...] = (),
    ) -> None:
        self._set(deny_networks=deny_networks, hosts=hosts)

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


class Timeouts(Frozen):
    _fields = ("handshake", "connect", "idle", "shutdown_grace")

    handshake: float
    connect: float
    idle: float
    shutdown_grace: float

    def __init__(
        self,
        handshake: float = 10.0,
        connect: float = 10.0,
        idle: float = 900.0,
        shutdown_grace: float = 30.0,
    ) -> None:
        self._set(handshake=handshake, connect=connect, idle=idle, shutdown_grace=shutdown_grace)


class Limits(Frozen):
    _fields = ("max_connections", "max_connections_per_source", "max_request_bytes")

    max_connections: int
    max_connections_per_source: int
    max_request_bytes: int

    def __init__(
        self,
        max_connections: int = 10000,
        max_connections_per_source: int = 256,
        max_request_bytes: int = 8192,
    ) -> None:
        self._set(
            max_connections=max_connections,
            max_connections_per_source=max_connections_per_source,
            max_request_bytes=max_request_bytes,
        )


class Metrics(Frozen):
    """`host`/`port` of the metrics listener; `None` when disabled."""

    _fields = ("host", "port")

    host: str | None
    port: int | None

    def __init__(self, host: str | None = "127.0.0.1", port: int | None = 9128) -> None:
        self._set(host=host, port=port)

    @property
    def enabled(self) -> bool:
        return self.host is not None and self.port is not None


class Admin(Frozen):
    """The admin API on the metrics listener (SPEC section 7.1): served only when `token_file`
    is set. `token` is that file's one line, read when the config is loaded, so a reload that
    re-reads the config re-reads the token too. Never in a repr, a log line or a summary."""

    _fields = ("token_file", "token")
    _unshown = frozenset({"token"})

    token_file: Path | None
    token: str | None

    def __init__(self, token_file: Path | None = None, token: str | None = None) -> None:
        self._set(token_file=token_file, token=token)

    @property
    def enabled(self) -> bool:
        return self.token is not None


class Reload(Frozen):
    """What a successful SIGHUP does besides swapping the config for new requests."""

    _fields = ("close_denied",)

    # Re-decide every open tunnel under the new config and close those it refuses.
    close_denied: bool

    def __init__(self, close_denied: bool = False) -> None:
        self._set(close_denied=close_denied)


class Log(Frozen):
    _fields = ("level", "format", "access_log", "access_format")

    level: str
    format: LogFormat
    access_log: str
    access_format: AccessFormat

    def __init__(
        self,
        level: str = "info",
        format: LogFormat = "json",
        access_log: str = "-",
        access_format: AccessFormat = "json",
    ) -> None:
        self._set(level=level, format=format, access_log=access_log, access_format=access_format)


# The defaults of Config's fields: one value each, shared by every Config that takes it.
_DEFAULT_LISTEN = (Listener("::", 3128),)
_DEFAULT_ALLOW = Policy()
_DEFAULT_DESTINATIONS = Destinations()
_DEFAULT_TIMEOUTS = Timeouts()
_DEFAULT_LIMITS = Limits()
_DEFAULT_METRICS = Metrics()
_DEFAULT_LOG = Log()
_DEFAULT_ADMIN = Admin()
_DEFAULT_RELOAD = Reload()
_NO_POLICIES: Mapping[str, Policy] = MappingProxyType({})


class Config(Frozen):
    """One whole configuration.

    `policies` maps every policy name to its `Policy`, `default` first: the model builds that
    entry from `allow`, so a config that names no policy means what it always meant, and
    `replace(config, allow=...)` changes the default policy as expected. Any
    `default` given in `policies` is replaced by `allow` (the loader refuses one in YAML). Every
    name a client or user is bound to must be defined: a config that says otherwise cannot be
    made.
    """

    _fields = (
        "listen",
        "allow",
        "policies",
        "clients",
        "users",
        "htpasswd_file",
        "upstream",
        "destinations",
        "timeouts",
        "limits",
        "metrics",
        "log",
        "admin",
        "reload",
        "source",
        "warnings",
    )
    # Not hashed: a mapping is not hashable, and the policies are a function of the other fields.
    _unhashed = frozenset({"policies"})

    listen: tuple[Listener, ...]
    allow: Policy
    policies: Mapping[str, Policy]
    clients: tuple[Client, ...]
    users: tuple[User, ...]
    htpasswd_file: Path | None
    upstream: Upstream | None
    destinations: Destinations
    timeouts: Timeouts
    limits: Limits
    metrics: Metrics
    log: Log
    admin: Admin
    reload: Reload
    # Where this config came from ("<embedded default>" or a path), for messages.
    source: str
    # Non-fatal findings of the loader (e.g. inline upstream password); logged at start-up.
    warnings: tuple[str, ...]
    users_by_name: Mapping[str, User]
    # Whether any policy is in report mode: then every access line carries `would_deny`.
    report_mode: bool
    # Whether Basic credentials are checked at all: only with `users` or an `htpasswd_file`.
    # Without either, a Proxy-Authorization header is ignored, as Squid ignores it when no
    # proxy_auth acl is reached (docs/configuration.md, "How the keys combine").
    checks_credentials: bool
    # Whether any policy has a TLS guard: then every access line carries sni, tls_version, alpn
    # and ja4 (SPEC 5.1).
    tls_guard: bool
    # Admission's indexes of `clients`, by position: the first client holding a source network,
    # the first listing a certificate name.
    client_networks: NetworkIndex
    client_tls_names: Mapping[str, int]

    def __init__(
        self,
        listen: tuple[Listener, ...] = _DEFAULT_LISTEN,
        allow: Policy = _DEFAULT_ALLOW,
        policies: Mapping[str, Policy] = _NO_POLICIES,
        clients: tuple[Client, ...] = (),
        users: tuple[User, ...] = (),
        htpasswd_file: Path | None = None,
        upstream: Upstream | None = None,
        destinations: Destinations = _DEFAULT_DESTINATIONS,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        limits: Limits = _DEFAULT_LIMITS,
        metrics: Metrics = _DEFAULT_METRICS,
        log: Log = _DEFAULT_LOG,
        admin: Admin = _DEFAULT_ADMIN,
        reload: Reload = _DEFAULT_RELOAD,
        source: str = "<embedded default>",
        warnings: tuple[str, ...] = (),
    ) -> None:
        self._set(
            listen=listen,
            clients=clients,
            users=users,
            htpasswd_file=htpasswd_file,
            upstream=upstream,
            destinations=destinations,
            timeouts=timeouts,
            limits=limits,
            metrics=metrics,
            log=log,
            admin=admin,
            reload=reload,
            source=source,
            warnings=warnings,
        )
        default = allow
        if default.name != DEFAULT_POLICY:
            default = replace(default, name=DEFAULT_POLICY)
        self._set(allow=default)
        policies_by_name: dict[str, Policy] = {DEFAULT_POLICY: default}
        for name, policy in policies.items():
            if name == DEFAULT_POLICY:
                continue
            if policy.name != name:
                raise ValueError(f"policy {policy.name!r} is filed under the name {name!r}")
            policies_by_name[name] = policy
        self._set(policies=MappingProxyType(policies_by_name))
        report_mode = any(policy.mode == "report" for policy in policies_by_name.values())
        self._set(report_mode=report_mode)
        checks = bool(self.users) or self.htpasswd_file is not None
        self._set(checks_credentials=checks)
        tls_guard = any(policy.tls != "off" for policy in policies_by_name.values())
        self._set(tls_guard=tls_guard)
        for kind, identities in (("client", self.clients), ("user", self.users)):
            for identity in identities:
                for name in identity.policies:
                    if name not in policies_by_name:
                        raise ValueError(
                            f"{kind} {identity.name!r} is bound to policy {name!r}, "
                            "which is not defined"
                        )
        # Admission by credentials looks the user up by name on every such connection; the
        # first entry of a name wins, as the list read in order would.
        by_name: dict[str, User] = {}
        for user in self.users:
            by_name.setdefault(user.name, user)
        self._set(users_by_name=MappingProxyType(by_name))
        numbered = ((net, i) for i, client in enumerate(self.clients) for net in client.networks)
        self._set(client_networks=NetworkIndex(numbered))
        tls_names: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            for tls_name in client.tls_names:
                tls_names.setdefault(tls_name, i)
        self._set(client_tls_names=MappingProxyType(tls_names))
