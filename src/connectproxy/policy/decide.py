"""Who may open a tunnel to where: pure functions over a `Config`.

Nothing here does I/O. The server reads the request, checks Basic credentials (a slow hash, done off
the event loop by `auth.py`) and then asks `decide`; after resolving it asks `usable_addresses`.
Keeping these pure is what lets `connectproxy explain` print exactly what the running proxy would
do, and lets the tests cover every branch without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from connectproxy.config.model import Config
from connectproxy.matching.addresses import in_networks, is_denied, normalise
from connectproxy.matching.netset import IPAddress
from connectproxy.outcome import Outcome
from connectproxy.wire.http import Target

Route = Literal["direct", "upstream"]


# Source and Decision are made for every connection, so they are plain classes with `Final`
# attributes rather than frozen dataclasses: compiled (setup.py), a dataclass's generated __init__
# stays interpreted and sets each field through object.__setattr__, which cost 9% of a tunnel's
# instructions. They are as immutable: mypy refuses an assignment, and compiled it raises.


class Source:
    """The client as admission sees it: address after PROXY protocol, and certificate names."""

    __slots__ = ("addr", "port", "tls_names")

    def __init__(self, addr: IPAddress, port: int, tls_names: tuple[str, ...] = ()) -> None:
        self.addr: Final = addr
        self.port: Final = port
        self.tls_names: Final = tls_names


@dataclass(frozen=True, slots=True)
class Credentials:
    """Basic credentials the client sent, after `auth.Authenticator` checked the password."""

    user: str
    valid: bool


class Decision:
    __slots__ = ("allowed", "client", "outcome", "reason", "route", "status", "user", "would_deny")

    def __init__(
        self,
        allowed: bool,
        status: int,
        outcome: Outcome,
        reason: str,
        client: str | None = None,
        user: str | None = None,
        would_deny: bool = False,
        route: Route = "direct",
    ) -> None:
        self.allowed: Final = allowed
        self.status: Final = status  # 200 when allowed, else the HTTP status to answer
        self.outcome: Final = outcome  # the metrics outcome for a refusal; "established" if allowed
        self.reason: Final = reason  # one line for the client and the log; never a secret
        self.client: Final = client  # the admitting clients/users name
        self.user: Final = user  # the Basic user name, when credentials were sent
        self.would_deny: Final = would_deny  # report mode let through what enforce would refuse
        self.route: Final = route

    def __repr__(self) -> str:
        return f"Decision({self.status} {self.outcome}: {self.reason}, client={self.client!r})"


def _deny(
    status: int,
    outcome: Outcome,
    reason: str,
    client: str | None = None,
    user: str | None = None,
) -> Decision:
    return Decision(False, status, outcome, reason, client=client, user=user)


def admit(source: Source, credentials: Credentials | None, config: Config) -> Decision:
    """Admission (docs/configuration.md, "How the keys combine"). Credentials, when sent, decide
    alone: wrong ones are refused even from an admitted network, so a sensor with a stale
    password is noticed instead of silently falling back to its network admission."""
    if credentials is not None:
        user = credentials.user
        if not credentials.valid:
            return _deny(407, "auth_failed", "invalid proxy credentials", user=user)
        found = next((u for u in config.users if u.name == user), None)
        if (
            found is not None
            and found.networks
            and not in_networks(normalise(source.addr), found.network_set)
        ):
            return _deny(407, "auth_failed", "user not allowed from this address", user=user)
        return Decision(True, 200, "established", "admitted by credentials", client=user, user=user)

    addr = normalise(source.addr)
    for client in config.clients:
        if client.networks and in_networks(addr, client.network_set):
            return Decision(
                True, 200, "established", "admitted by source address", client=client.name
            )
        if client.tls_names and any(n in client.tls_names for n in source.tls_names):
            return Decision(
                True, 200, "established", "admitted by client certificate", client=client.name
            )
    return _deny(407, "auth_required", "proxy authentication required")


def destination_allowed(target: Target, config: Config) -> tuple[bool, str]:
    """The destination step without the report-mode twist: is the target on the allowlist?"""
    allow = config.allow
    if target.ip is not None:
        if in_networks(normalise(target.ip), allow.network_set):
            return True, "address in allow.networks"
        return False, "IP address not in allow.networks"
    for pattern in allow.domains:
        if pattern.matches(target.host):
            return True, f"host matches {pattern.text}"
    return False, "host not in allow.domains"


def route_for(target: Target, config: Config) -> Route:
    upstream = config.upstream
    if upstream is None or not upstream.proxies:
        return "direct"
    if target.ip is None and any(p.matches(target.host) for p in upstream.direct_domains):
        return "direct"
    return "upstream"


def destination(
    target: Target, config: Config, client: str | None = None, user: str | None = None
) -> Decision:
    """The destination step for an admitted identity: port, then host or address. `doctor` asks
    this too, so it reports the proxy's own verdict."""
    if target.port not in config.allow.ports:
        return _deny(403, "forbidden", f"port {target.port} not allowed", client, user)
    ok, why = destination_allowed(target, config)
    if ok or config.allow.mode == "report":
        return Decision(
            True,
            200,
            "established",
            why if ok else f"{why} (report mode)",
            client=client,
            user=user,
            would_deny=not ok,
            route=route_for(target, config),
        )
    return _deny(403, "forbidden", f"destination not allowed: {why}", client, user)


def decide(
    target: Target, source: Source, credentials: Credentials | None, config: Config
) -> Decision:
    """Admission, then the destination; the first failing step answers."""
    admitted = admit(source, credentials, config)
    if not admitted.allowed:
        return admitted
    return destination(target, config, admitted.client, admitted.user)


def usable_addresses(addrs: list[IPAddress], config: Config) -> list[IPAddress]:
    """Resolve and check: drop every resolved address in `destinations.deny_networks`, keeping
    order.

    The tunnel connects to exactly what this returns, so a DNS answer cannot change between the
    check and the connect."""
    deny = config.destinations.deny_set
    kept = [addr for addr in addrs if not is_denied(addr, deny)]
    # Duplicates dropped in order; a single address skips it (ipaddress hashes in Python).
    return kept if len(kept) < 2 else list(dict.fromkeys(kept))
