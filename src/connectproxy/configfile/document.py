"""The whole file: its top-level keys, each section checked in file order, then the checks that
need more than one section.

Sections are checked in the order of the file, so the first error reported is
the first one an operator reading from the top would meet. Warnings keep that order too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connectproxy.config.model import (
    DEFAULT_POLICY,
    Client,
    Config,
    Listener,
    Metrics,
    Policy,
    User,
)
from connectproxy.configfile import admin, identities, listeners, runtime
from connectproxy.configfile.allow import allow_rules, policies
from connectproxy.configfile.checker import Checker, Section, describe
from connectproxy.configfile.destinations import destinations
from connectproxy.configfile.errors import Where
from connectproxy.configfile.files import htpasswd_file
from connectproxy.configfile.upstream import upstream

__all__ = ["TOP_KEYS", "validate"]

TOP_KEYS = (
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
)

# The defaults of model.py's classes are the defaults of every absent key.
_DEFAULTS = Config()


def validate(check: Checker, data: Any, where: Where) -> Config:
    """The Config that `data` (the parsed file, or a mapping shaped like it) describes."""
    if data is None:  # an empty file: every key takes its default
        data = {}
    if not isinstance(data, Mapping):
        raise check.error(
            where, f"the file must be a mapping of keys such as listen:, not {describe(data)}"
        )
    top = Section(check, data, where, TOP_KEYS)
    listen_item = top.get("listen")
    listen, listener_places = (
        (_DEFAULTS.listen, {}) if listen_item is None else listeners.listen(check, *listen_item)
    )
    metrics_item = top.get("metrics")
    metrics, metrics_place = (
        (_DEFAULTS.metrics, None) if metrics_item is None else runtime.metrics(check, *metrics_item)
    )
    _check_metrics_address(check, listen, listener_places, metrics, metrics_place)
    allow = top.get_or("allow", allow_rules, _DEFAULTS.allow)
    named, policy_places = top.get_or("policies", policies, ({}, {}))
    clients = top.get_or("clients", identities.clients, ())
    users = top.get_or("users", identities.users, ())
    _check_policy_names(check, named)
    password_file = top.get_or("htpasswd_file", htpasswd_file, None)
    _check_password_file_users(check, password_file)
    upstream_rules = top.get_or("upstream", upstream, None)
    destination_rules = top.get_or("destinations", destinations, _DEFAULTS.destinations)
    timeouts = top.get_or("timeouts", runtime.timeouts, _DEFAULTS.timeouts)
    limits = top.get_or("limits", runtime.limits, _DEFAULTS.limits)
    log = top.get_or("log", runtime.log, _DEFAULTS.log)
    admin_rules = top.get_or("admin", admin.admin, _DEFAULTS.admin)
    reload = top.get_or("reload", admin.reload, _DEFAULTS.reload)
    if admin_rules.enabled and not metrics.enabled:
        check.warn(
            top.where_of("admin"),
            "admin.token_file is set but metrics.listen is null: the admin API is served on "
            "the metrics listener, so it is off",
        )
    if top.get("allow") is not None:
        policy_places = {DEFAULT_POLICY: top.where_of("allow"), **policy_places}
    _warn_about_policy(check, listen, allow, named, clients, users, password_file, policy_places)
    # Made once, with every warning: the whole-config warnings above are found from the parts,
    # since making a Config a second time to add them cost 2% of explain's instructions on the
    # benchmark's large config (a thousand clients and users indexed again).
    return Config(
        listen=listen,
        allow=allow,
        policies=named,
        clients=clients,
        users=users,
        htpasswd_file=password_file,
        upstream=upstream_rules,
        destinations=destination_rules,
        timeouts=timeouts,
        limits=limits,
        metrics=metrics,
        log=log,
        admin=admin_rules,
        reload=reload,
        source=check.source,
        warnings=tuple(check.warnings),
    )


def _check_metrics_address(
    check: Checker,
    listen: tuple[Listener, ...],
    listener_places: listeners.ListenerPlaces,
    metrics: Metrics,
    metrics_place: Where | None,
) -> None:
    """Two listeners on one address would only fail later, at bind time, less clearly."""
    for listener in listen:
        if (listener.host, listener.port) != (metrics.host, metrics.port):
            continue
        if metrics_place is not None:
            raise check.error(
                metrics_place,
                f"{listener.address} is also a proxy listener; "
                "give metrics another port, or null to disable them",
            )
        # metrics.listen took its default, so the listener is the one written down.
        raise check.error(
            listener_places[(listener.host, listener.port)],
            f"{listener.address} is also the default metrics address; "
            "use another port, or set metrics.listen",
        )


def _check_policy_names(check: Checker, named: dict[str, Policy]) -> None:
    """Every name a client or user is bound to must be defined, wherever `policies` sits."""
    defined = [DEFAULT_POLICY, *named]
    for name, where in check.policy_refs:
        if name in named or name == DEFAULT_POLICY:
            continue
        import difflib  # for this message only: its import is 1% of explain's time

        close = difflib.get_close_matches(name, defined, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise check.error(
            where,
            f"no policy is named {name!r}; {suggestion}defined policies: {', '.join(defined)} "
            "(default is the allow section)",
        )


def _check_password_file_users(check: Checker, password_file: Path | None) -> None:
    """A `users` entry without password_hash takes its password from the htpasswd file: without
    one it could never log in, which is a mistake. A name the file does not hold (yet) is only
    warned about: the file is read again when it changes, so the line may come later."""
    for user, where in check.password_file_users:
        if password_file is None:
            raise check.error(
                where,
                f"user {user!r} has no password_hash and there is no htpasswd_file to hold its "
                "password: add password_hash (create one with `connectproxy hash-password`), "
                "or set htpasswd_file",
            )
        if user not in check.htpasswd_names:
            check.warn(
                where,
                f"user {user!r} has no password_hash and {str(password_file)!r} has no line "
                "for it, so it cannot log in until one is added (the file is read again when "
                "it changes)",
            )


def _admits_nothing(policy: Policy) -> bool:
    return not policy.ports or (
        policy.mode == "enforce" and not policy.domains and not policy.networks
    )


def _warn_about_policy(
    check: Checker,
    listen: tuple[Listener, ...],
    allow: Policy,
    named: dict[str, Policy],
    clients: tuple[Client, ...],
    users: tuple[User, ...],
    password_file: Path | None,
    policy_places: dict[str, Where],
) -> None:
    """Valid but probably not what the operator meant: say so at start-up."""
    where = Where(None, None)
    nobody = not clients and not users and password_file is None
    if nobody:
        check.warn(where, "no clients, users or htpasswd_file: every request will get 407")
    bound = {name for client in clients for name in client.policies}
    bound.update(name for user in users for name in user.policies)
    if password_file is not None:  # its users have [default]
        bound.add(DEFAULT_POLICY)
    # Only a policy someone is bound to can make a request fail; with nobody at all, `allow`
    # is still what every future client would get by default.
    if (DEFAULT_POLICY in bound or nobody) and _admits_nothing(allow):
        check.warn(where, "allow admits no destination: every request will get 403")
    for name, place in policy_places.items():
        if name == DEFAULT_POLICY:  # written as `allow`: unused only if others are bound
            if not nobody and name not in bound:
                check.warn(
                    place,
                    "no client or user is bound to the default policy (every one names its "
                    "policies), so allow is never consulted",
                )
        elif name not in bound:
            check.warn(
                place,
                "no client or user is bound to this policy, so it allows nothing; name it in a "
                "client's or user's policies, or remove it",
            )
        elif _admits_nothing(named[name]):
            check.warn(
                place,
                "admits no destination (no ports, or mode enforce with no domains and no "
                "networks): it lets nothing through for the clients and users bound to it",
            )
    names_used = any(client.tls_names for client in clients)
    client_certs = any(
        listener.tls is not None and listener.tls.client_ca_file is not None for listener in listen
    )
    if names_used and not client_certs:
        check.warn(
            where, "clients with tls_names can never match: no listener has tls.client_ca_file"
        )
