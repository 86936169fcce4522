"""The effective policy as `check-config` prints it, one line per fact.

It renders a validated Config, so it is shared by `check-config` and by `run`'s start-up log,
whatever the config came from (YAML, the embedded default or a translated squid.conf). It never
prints a secret or a hash: this text ends up in terminals, tickets and chat.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectproxy.config.model import Config, Listener, Upstream

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


def summarize(config: Config) -> list[str]:
    """The effective policy as `check-config` prints it: what is admitted, where to, and how.

    User entries show names only, and upstream proxies show their user name at most: this text
    ends up in terminals, tickets and chat, so it never carries a secret or a hash.
    """
    allow = config.allow
    mode: str = allow.mode
    if mode == "report":
        mode += " (destinations outside the allowlist are let through and logged as would_deny)"
    lines = [f"source: {config.source}"]
    lines += [_listener_line(listener, config.listen) for listener in config.listen]
    lines += [
        f"allow.mode: {mode}",
        f"allow.ports: {_join(sorted(allow.ports))}",
        f"allow.domains: {_join(pattern.text for pattern in allow.domains)}",
        f"allow.networks: {_join(allow.networks)}",
    ]
    if not config.clients:
        lines.append("clients: (none)")
    for client in config.clients:
        admitted_by = []
        if client.networks:
            admitted_by.append(f"networks {_join(client.networks)}")
        if client.tls_names:
            admitted_by.append(f"tls_names {_join(client.tls_names)}")
        lines.append(f"client {client.name}: {'; '.join(admitted_by)}")
    if not config.users:
        lines.append("users: (none)")
    for user in config.users:
        origin = f"from {_join(user.networks)}" if user.networks else "from any address"
        lines.append(f"user {user.name}: Basic password, {origin}")
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
    log = config.log
    lines.append(
        f"log: level {log.level}, format {log.format}, "
        f"access_log {'stdout' if log.access_log == '-' else log.access_log} "
        f"({log.access_format})"
    )
    return lines
