"""Who may open a tunnel to where: pure functions over a `Config`.

Nothing here does I/O. The server reads the request, checks Basic credentials (a slow hash, done off
the event loop by `auth.py`) and then asks `decide`; after resolving it asks `usable_addresses`.
Keeping these pure is what lets `connectproxy explain` print exactly what the running proxy would
do, and lets the tests cover every branch without sockets.
"""

from __future__ import annotations

from typing import Final, Literal

from connectproxy.config.model import DEFAULT_POLICIES, Config, Policy
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


class Credentials:
    """Basic credentials the client sent, after `auth.Authenticator` checked the password.

    Compared, hashed and shown as the frozen dataclass it was; written out because `explain`
    does not import dataclasses (config/frozen.py)."""

    __slots__ = ("user", "valid")

    def __init__(self, user: str, valid: bool) -> None:
        self.user: Final = user
        self.valid: Final = valid

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.user, self.valid) == (other.user, other.valid)

    def __hash__(self) -> int:
        return hash((self.user, self.valid))

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, valid={self.valid!r})"


class Decision:
    __slots__ = (
        "allowed",
        "client",
        "outcome",
        "policies",
        "policy",
        "reason",
        "route",
        "status",
        "user",
        "would_deny",
    )

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
        policy: str | None = None,
        policies: tuple[str, ...] = (),
    ) -> None:
        self.allowed: Final = allowed
        self.status: Final = status  # 200 when allowed, else the HTTP status to answer
        self.outcome: Final = outcome  # the metrics outcome for a refusal; "established" if allowed
        self.reason: Final = reason  # one line for the client and the log; never a secret
        self.client: Final = client  # the admitting clients/users name
        self.user: Final = user  # the Basic user name, when credentials were sent
        self.would_deny: Final = would_deny  # report mode let through what enforce would refuse
        self.route: Final = route
        self.policy: Final = policy  # the deciding policy's name; None before step 5
        self.policies: Final = policies  # the admitted identity's policies, in the order tried

    def __repr__(self) -> str:
        return (
            f"Decision({self.status} {self.outcome}: {self.reason}, client={self.client!r}, "
            f"policy={self.policy!r})"
        )


def _deny(
    status: int,
    outcome: Outcome,
    reason: str,
    client: str | None = None,
    user: str | None = None,
) -> Decision:
    return Decision(False, status, outcome, reason, client=client, user=user)


def admit(source: Source, credentials: Credentials | None, config: Config) -> Decision:
    """Admission (docs/configuration.md, "How the keys combine"). Credentials, when sent to a
    proxy that checks them, decide alone: wrong ones are refused even from an admitted network,
    so a sensor with a stale password is noticed instead of silently falling back to its
    network admission. A proxy with no `users` and no `htpasswd_file` has nothing to check them
    against and ignores them, as Squid does where no proxy_auth acl is reached."""
    if credentials is not None and config.checks_credentials:
        user = credentials.user
        if not credentials.valid:
            return _deny(407, "auth_failed", "invalid proxy credentials", user=user)
        found = config.users_by_name.get(user)
        if found is None:  # an htpasswd user: bound to the default policy
            return Decision(
                True,
                200,
                "established",
                "admitted by credentials",
                client=user,
                user=user,
                policies=DEFAULT_POLICIES,
            )
        if found.networks and not in_networks(normalise(source.addr), found.network_set):
            return _deny(407, "auth_failed", "user not allowed from this address", user=user)
        return Decision(
            True,
            200,
            "established",
            "admitted by credentials",
            client=user,
            user=user,
            policies=found.policies,
        )

    # The first client in the list that admits the source, by network or by certificate name,
    # found through the config's indexes rather than a walk over every client.
    addr = normalise(source.addr)
    first = config.client_networks.first(addr)
    by_network = first >= 0
    for tls_name in source.tls_names:
        number = config.client_tls_names.get(tls_name, -1)
        if number >= 0 and (first < 0 or number < first):
            first, by_network = number, False
    if first >= 0:
        client = config.clients[first]
        return Decision(
            True,
            200,
            "established",
            "admitted by source address" if by_network else "admitted by client certificate",
            client=client.name,
            policies=client.policies,
        )
    return _deny(407, "auth_required", "proxy authentication required")


def policy_allows(target: Target, policy: Policy) -> str | None:
    """Whether the target's host or address is one of the policy's destinations (its port is
    the caller's business): the reason if so, else None. A host is looked up in the policy's
    domain index, suffix by suffix, never compared with each pattern in turn."""
    if target.ip is not None:
        if in_networks(normalise(target.ip), policy.network_set):
            return "address in the allowed networks"
        return None
    pattern = policy.domain_index.match(target.host)
    return None if pattern is None else f"host matches {pattern.text}"


def destination_allowed(
    target: Target, config: Config, policies: tuple[str, ...] = DEFAULT_POLICIES
) -> tuple[bool, str]:
    """The destination step without ports and report mode: is the target's host or address
    among the destinations of one of `policies` (names, in the order tried)?"""
    for name in policies:
        why = policy_allows(target, config.policies[name])
        if why is not None:
            return True, why
    return False, _not_among(target, policies)


def _named(policies: tuple[str, ...]) -> str:
    """ "policy a" or "policies a, b": only the names, never what they allow."""
    if len(policies) == 1:
        return f"policy {policies[0]}"
    return "policies " + ", ".join(policies)


def _not_among(target: Target, tried: tuple[str, ...]) -> str:
    what = "IP address in no networks" if target.ip is not None else "host in no domains"
    return f"{what} of {_named(tried)}"


def route_for(target: Target, config: Config) -> Route:
    upstream = config.upstream
    if upstream is None or not upstream.proxies:
        return "direct"
    if target.ip is None and target.host in upstream.direct_index:
        return "direct"
    return "upstream"


def destination(
    target: Target,
    config: Config,
    client: str | None = None,
    user: str | None = None,
    policies: tuple[str, ...] = DEFAULT_POLICIES,
) -> Decision:
    """Step 5 for an admitted identity bound to `policies` (SPEC section 3.2), in this order:

    1. the first policy whose ports hold the target's port and whose domains or networks match
       the target allows it, and is the decision's policy;
    2. otherwise the first of them in report mode whose ports hold the port lets it through
       with `would_deny` (and is the decision's policy);
    3. otherwise 403, the reason naming the policies tried, never what they allow.

    `doctor` asks this too, with no identity: it is checked against the default policy alone,
    which is what `policies` is unless given, so doctor reports the proxy's own verdict for a
    client bound to `[default]`."""
    port = target.port
    report: Policy | None = None
    held = False
    for name in policies:
        policy = config.policies[name]
        if port not in policy.ports:
            continue
        held = True
        why = policy_allows(target, policy)
        if why is not None:
            return Decision(
                True,
                200,
                "established",
                why,
                client=client,
                user=user,
                route=route_for(target, config),
                policy=name,
                policies=policies,
            )
        if report is None and policy.mode == "report":
            report = policy
    if not held:
        return Decision(
            False,
            403,
            "forbidden",
            f"port {port} not allowed by {_named(policies)}",
            client=client,
            user=user,
            policies=policies,
        )
    # The policies whose destinations were checked: those that hold the port.
    tried = tuple(name for name in policies if port in config.policies[name].ports)
    not_among = _not_among(target, tried)
    if report is not None:
        return Decision(
            True,
            200,
            "established",
            f"{not_among} (report mode)",
            client=client,
            user=user,
            would_deny=True,
            route=route_for(target, config),
            policy=report.name,
            policies=policies,
        )
    return Decision(
        False,
        403,
        "forbidden",
        f"destination not allowed: {not_among}",
        client=client,
        user=user,
        policies=policies,
    )


def decide(
    target: Target, source: Source, credentials: Credentials | None, config: Config
) -> Decision:
    """Admission, then the destination against the admitted identity's policies; the first
    failing step answers."""
    admitted = admit(source, credentials, config)
    if not admitted.allowed:
        return admitted
    return destination(target, config, admitted.client, admitted.user, admitted.policies)


def usable_addresses(addrs: list[IPAddress], config: Config) -> list[IPAddress]:
    """Resolve and check: drop every resolved address in `destinations.deny_networks`, keeping
    order.

    The tunnel connects to exactly what this returns, so a DNS answer cannot change between the
    check and the connect."""
    deny = config.destinations.deny_set
    kept = [addr for addr in addrs if not is_denied(addr, deny)]
    # Duplicates dropped in order; a single address skips it (ipaddress hashes in Python).
    return kept if len(kept) < 2 else list(dict.fromkeys(kept))
