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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from connectproxy.matching.domains import DomainPattern
from connectproxy.matching.netset import IPAddress, IPNetwork, NetworkSet

ProxyProtocolMode = Literal["off", "v1", "v2", "any"]
AllowMode = Literal["enforce", "report"]
Strategy = Literal["failover", "round_robin"]
LogFormat = Literal["json", "console"]
AccessFormat = Literal["json", "squid"]


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
class Allow:
    ports: frozenset[int] = frozenset({443})
    domains: tuple[DomainPattern, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    mode: AllowMode = "enforce"

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        return NetworkSet(self.networks)


@dataclass(frozen=True)
class Client:
    """Admitted without a password: by source network or verified certificate name."""

    name: str
    networks: tuple[IPNetwork, ...] = ()
    tls_names: tuple[str, ...] = ()

    @functools.cached_property
    def network_set(self) -> NetworkSet:
        """`networks` as a NetworkSet: every connection's source is checked against it, and
        `address in network` runs in Python (see netset.py). Built once, on first use; `User`
        and `Allow` keep theirs the same way."""
        return NetworkSet(self.networks)


@dataclass(frozen=True)
class User:
    """Admitted by Basic credentials; `networks` empty means from anywhere."""

    name: str
    password_hash: str = field(repr=False)
    networks: tuple[IPNetwork, ...] = ()

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
class Log:
    level: str = "info"
    format: LogFormat = "json"
    access_log: str = "-"
    access_format: AccessFormat = "json"


@dataclass(frozen=True)
class Config:
    # Every IPv4 and IPv6 address, as Squid listens (server.open_listener).
    listen: tuple[Listener, ...] = (Listener("::", 3128),)
    allow: Allow = Allow()
    clients: tuple[Client, ...] = ()
    users: tuple[User, ...] = ()
    htpasswd_file: Path | None = None
    upstream: Upstream | None = None
    destinations: Destinations = Destinations()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    metrics: Metrics = Metrics()
    log: Log = Log()
    # Where this config came from ("<embedded default>" or a path), for messages.
    source: str = "<embedded default>"
    # Non-fatal findings of the loader (e.g. inline upstream password); logged at start-up.
    warnings: tuple[str, ...] = ()
