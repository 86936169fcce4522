"""The `clients` and `users` sections: who is admitted, by address, certificate or password.

Client and user names share one namespace (`Checker.names`) because both label the same metrics
and log field; a second entry with a name already used is refused with the place of the first.
Password hashes are checked for their format only, and a value that looks like a plaintext
password is refused without ever being repeated in the message. (`htpasswd_file` is read, so it
is checked in `files`.) A `users` entry without `password_hash` names a user of the htpasswd file,
to give it policies or networks; `document` checks that there is such a file.
"""

from __future__ import annotations

from typing import Any

from connectproxy.config.model import DEFAULT_POLICIES, Client, User
from connectproxy.configfile.checker import Checker, Section, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.netvalues import networks
from connectproxy.configfile.scalars import basic_user_name, has_control, name, string
from connectproxy.credentials.passwords import check_hash_format

__all__ = ["clients", "users"]


def clients(check: Checker, value: Any, where: Where) -> tuple[Client, ...]:
    result = []
    for item, at in items(check, value, where):
        section = Section(check, item, at, ("name", "networks", "tls_names", "policies"))
        name_value, name_at = section.require("name", "a label for logs and metrics")
        client_name = name(check, name_value, name_at)
        client_networks = section.get_or("networks", networks, ())
        tls_names = section.get_or("tls_names", _tls_names, ())
        if not client_networks and not tls_names:
            raise check.error(
                at,
                "a client needs networks or tls_names (clients are admitted without a "
                "password; to admit by password, use users)",
            )
        _claim_name(check, client_name, name_at)
        bound = section.get_or("policies", _policy_names, DEFAULT_POLICIES)
        result.append(Client(client_name, client_networks, tls_names, bound))
    return tuple(result)


def _policy_names(check: Checker, value: Any, where: Where) -> tuple[str, ...]:
    """The names an identity is bound to, in the order they are tried. Whether each is defined
    is checked once every section is read (`document`), since `policies` may come later in the
    file; the place of each name is kept for that message."""
    listed = items(check, value, where)
    if not listed:
        raise check.error(
            where,
            "an empty list binds to no policy, so every request would get 403; name at least "
            "one policy, or leave the key out for [default]",
        )
    names: list[str] = []
    for item, at in listed:
        text = string(check, item, at)
        if text in names:
            raise check.error(at, f"policy {text!r} is listed twice; keep one")
        names.append(text)
        check.policy_refs.append((text, at))
    return tuple(names)


def _tls_names(check: Checker, value: Any, where: Where) -> tuple[str, ...]:
    names = []
    for item, at in items(check, value, where):
        text = string(check, item, at)
        if not text or has_control(text):
            raise check.error(at, "must be a certificate name (subject CN or DNS SAN)")
        names.append(text)
    return tuple(names)


def users(check: Checker, value: Any, where: Where) -> tuple[User, ...]:
    result = []
    for item, at in items(check, value, where):
        section = Section(check, item, at, ("name", "password_hash", "networks", "policies"))
        name_value, name_at = section.require("name", "the Basic user name")
        user_name = basic_user_name(check, name_value, name_at)
        hash_item = section.get("password_hash")
        password_hash = None if hash_item is None else _password_hash(check, *hash_item)
        if password_hash is None:
            check.password_file_users.append((user_name, at))
        user_networks = section.get_or("networks", networks, ())
        _claim_name(check, user_name, name_at)
        bound = section.get_or("policies", _policy_names, DEFAULT_POLICIES)
        result.append(User(user_name, password_hash, user_networks, bound))
    return tuple(result)


def _password_hash(check: Checker, value: Any, where: Where) -> str:
    text = string(check, value, where)
    try:
        check_hash_format(text)
    except ValueError as error:
        # Never repeat the value: it may well be a real password.
        if "$" not in text:
            raise check.error(
                where,
                "this looks like a plaintext password, which is refused; run "
                "`connectproxy hash-password` and put its output here",
            ) from None
        raise check.error(where, str(error)) from None
    return text


def _claim_name(check: Checker, taken: str, where: Where) -> None:
    first = check.names.get(taken)
    if first is not None:
        raise check.error(
            where,
            f"{taken!r} is already the name of {first.describe()}; "
            "client and user names must be unique",
        )
    check.names[taken] = where
