"""The effective policy as `check-config` prints it, one line per fact.

It renders a validated Config, so it is shared by `check-config` and by `run`'s start-up log,
whatever the config came from (YAML, the embedded default or a translated squid.conf). It never
prints a secret or a hash: this text ends up in terminals, tickets and chat.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectproxy.config.model import DEFAULT_POLICY, Config, Listener, Policy, Upstream
from connectproxy.matching.domains import DomainPattern

__all__ = ["summarize"]


def _join(items: Iterable[object]) -> str:
    text = ", ".join(str(item) for item in items)
    return text or "(none)"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _listener_scope(listener: Listener, listeners: tuple[Listener, ...]) -> str | None:
    """Which clients an unspecified address takes, since "[::]" alone and "[::]" beside an
    IPv4 listener on its port differ (server.listening.bind_listener)."""
    if listener.host == "0.0.0.0":
        return "every IPv4 address"
    if listener.host != "::":
        return None
    if any(o.port == listener.port and ":" not in o.host for o in listeners):
        return "every IPv6 address"
    return "every IPv4 and IPv6 address, one dual-stack socket; IPv4 only if the host has no IPv6"


def _listener_line(listener: Listener, listeners: tuple[Listener, ...]) -> str:
    details = []
    if (scope := _listener_scope(listener, listeners)) is not None:
        details.append(scope)
    if listener.proxy_protocol != "off":
        details.append(f"PROXY protocol {listener.proxy_protocol} required")
    tls = listener.tls
    if tls is not None:
        details.append(f"TLS with {tls.cert_file}")
        if tls.client_ca_file is not None:
            required = "required" if tls.require_client_cert else "optional"
            details.append(f"client certificates {required} (CA {tls.client_ca_file})")
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"listen: {listener.address}{suffix}"


def _upstream_lines(upstream: Upstream | None) -> list[str]:
    if upstream is None:
        return ["upstream: none (tunnels connect directly)"]
    lines = [f"upstream: strategy {upstream.strategy}"]
    for proxy in upstream.proxies:
        details = []
        if proxy.username is not None:
            details.append(f"as user {proxy.username}")
        if proxy.ca_file is not None:
            details.append(f"CA {proxy.ca_file}")
        if proxy.cert_file is not None:
            details.append(f"client certificate {proxy.cert_file}")
        suffix = f" ({'; '.join(details)})" if details else ""
        lines.append(f"upstream proxy: {proxy.name}{suffix}")
    lines.append(f"upstream.direct_domains: {_join(p.text for p in upstream.direct_domains)}")
    return lines


def _mode(policy: Policy) -> str:
    if policy.mode == "report":
        return (
            "report (destinations outside the allowlist are let through and logged as would_deny)"
        )
    return policy.mode


_TLS_TERMS = {
    "observe": "observe (the tunnel's ClientHello is logged, never refused)",
    "require": "require (a tunnel must start with a TLS ClientHello)",
    "verify_sni": "verify_sni (a tunnel must start with a TLS ClientHello naming the CONNECT host)",
}


def _tls(policy: Policy) -> str:
    return _TLS_TERMS.get(policy.tls, policy.tls)


def _policy_lines(prefix: str, policy: Policy) -> list[str]:
    return [
        f"{prefix}.mode: {_mode(policy)}",
        f"{prefix}.ports: {_join(sorted(policy.ports))}",
        f"{prefix}.domains: {_join(pattern.text for pattern in policy.domains)}",
        f"{prefix}.networks: {_join(policy.networks)}",
    ]


def _bound_line(prefix: str, name: str, config: Config) -> str:
    clients = [client.name for client in config.clients if name in client.policies]
    users = [user.name for user in config.users if name in user.policies]
    if name == DEFAULT_POLICY and config.htpasswd_file is not None:
        users.append("(htpasswd_file users without a users entry)")
    return f"{prefix} bound to: clients {_join(clients)}; users {_join(users)}"


def _kinds_by_domain(policy: Policy) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for pattern in policy.domains:
        kinds.setdefault(pattern.domain, set()).add(pattern.kind)
    return kinds


def _pattern_covered(kinds: dict[str, set[str]], pattern: DomainPattern) -> bool:
    """Whether one of the patterns filed in `kinds` covers `pattern`: one at its own domain
    of a kind at least as wide, or a suffix or subdomains pattern at a parent domain. A walk
    over the pattern's few parent domains, so a summary of 10,000 patterns stays quick."""
    here = kinds.get(pattern.domain, set())
    if "suffix" in here or (pattern.kind in here):
        return True
    domain = pattern.domain
    dot = domain.find(".")
    while dot >= 0:
        if kinds.get(domain[dot + 1 :], set()) & {"suffix", "subdomains"}:
            return True
        dot = domain.find(".", dot + 1)
    return False


def _covers(outer: Policy, inner: Policy) -> bool:
    """Whether `outer` allows every destination `inner` allows, on the same terms, so `inner`
    adds nothing beside it. The modes must agree: an enforce policy is not covered by a report
    one (it turns would_deny into allowed), and a report policy lets anything through on its
    ports, so only another report policy on the same ports or more covers it. The TLS guards
    must agree too: the deciding policy's `tls` checks the tunnel."""
    if inner.mode != outer.mode or inner.tls != outer.tls or not inner.ports <= outer.ports:
        return False
    if inner.mode == "report":
        return True
    kinds = _kinds_by_domain(outer)
    return all(_pattern_covered(kinds, i) for i in inner.domains) and all(
        any(i.version == o.version and i.subnet_of(o) for o in outer.networks)  # type: ignore[arg-type]
        for i in inner.networks
    )


def _overlap_notes(config: Config) -> list[str]:
    """Name every policy that adds nothing for an identity because another of its policies
    already allows all of it: a binding that looks like it matters but does not."""
    notes = []
    known: dict[tuple[str, str], bool] = {}
    identities = [(f"client {c.name}", c.policies) for c in config.clients]
    identities += [(f"user {u.name}", u.policies) for u in config.users]
    for who, names in identities:
        for i, name in enumerate(names):
            for j, other in enumerate(names):
                if i == j:
                    continue
                pair = (other, name)
                if pair not in known:
                    known[pair] = _covers(config.policies[other], config.policies[name])
                # Two equal policies: only the later one adds nothing.
                if known[pair] and (
                    j < i or not _covers(config.policies[name], config.policies[other])
                ):
                    notes.append(
                        f"note: policy {name} adds nothing for {who}: "
                        f"policy {other} already allows all of it"
                    )
                    break
    return notes


def summarize(config: Config) -> list[str]:
    """The effective policy as `check-config` prints it: what is admitted, where to, and how.

    User entries show names only, and upstream proxies show their user name at most: this text
    ends up in terminals, tickets and chat, so it never carries a secret or a hash. A config
    with no named policy prints as it did before policies were named.
    """
    named = len(config.policies) > 1
    lines = [f"source: {config.source}"]
    lines += [_listener_line(listener, config.listen) for listener in config.listen]
    lines += _policy_lines("allow", config.allow)
    if named or config.allow.tls != "off":
        lines.append(f"allow.tls: {_tls(config.allow)}")
    if named:
        lines.append(_bound_line("allow (policy default)", DEFAULT_POLICY, config))
        for name, policy in config.policies.items():
            if name == DEFAULT_POLICY:
                continue
            prefix = f"policies.{name}"
            lines += _policy_lines(prefix, policy)
            lines.append(f"{prefix}.tls: {_tls(policy)}")
            lines.append(_bound_line(prefix, name, config))
    if not config.clients:
        lines.append("clients: (none)")
    for client in config.clients:
        admitted_by = []
        if client.networks:
            admitted_by.append(f"networks {_join(client.networks)}")
        if client.tls_names:
            admitted_by.append(f"tls_names {_join(client.tls_names)}")
        if named:
            admitted_by.append(f"policies {_join(client.policies)}")
        lines.append(f"client {client.name}: {'; '.join(admitted_by)}")
    if not config.users:
        lines.append("users: (none)")
    for user in config.users:
        origin = f"from {_join(user.networks)}" if user.networks else "from any address"
        bound = f"; policies {_join(user.policies)}" if named else ""
        password = "Basic password" if user.password_hash else "Basic password from htpasswd_file"
        lines.append(f"user {user.name}: {password}, {origin}{bound}")
    lines += _overlap_notes(config)
    lines.append(f"htpasswd_file: {config.htpasswd_file or '(none)'}")
    lines += _upstream_lines(config.upstream)
    destinations = config.destinations
    lines.append(f"destinations.deny_networks: {_join(destinations.deny_networks)}")
    lines.append(
        "destinations.hosts: "
        + _join(f"{name} -> {' '.join(map(str, addrs))}" for name, addrs in destinations.hosts)
    )
    timeouts, limits = config.timeouts, config.limits
    lines.append(
        f"timeouts: handshake {_seconds(timeouts.handshake)}, "
        f"connect {_seconds(timeouts.connect)}, idle {_seconds(timeouts.idle)}, "
        f"shutdown_grace {_seconds(timeouts.shutdown_grace)}"
    )
    lines.append(
        f"limits: max_connections {limits.max_connections}, "
        f"max_connections_per_source {limits.max_connections_per_source}, "
        f"max_request_bytes {limits.max_request_bytes}"
    )
    metrics = config.metrics
    if metrics.host is not None and metrics.port is not None:
        host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
        lines.append(f"metrics: http://{host}:{metrics.port}/metrics")
    else:
        lines.append("metrics: disabled")
    # The token file's name only: the token itself is never printed.
    if config.admin.token_file is not None:
        lines.append(f"admin: API on the metrics listener, token from {config.admin.token_file}")
    else:
        lines.append("admin: off (no admin.token_file)")
    lines.append(f"reload.close_denied: {'true' if config.reload.close_denied else 'false'}")
    log = config.log
    lines.append(
        f"log: level {log.level}, format {log.format}, "
        f"access_log {'stdout' if log.access_log == '-' else log.access_log} "
        f"({log.access_format})"
    )
    return lines
