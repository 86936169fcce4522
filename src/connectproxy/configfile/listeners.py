"""The `listen` section: the addresses the proxy serves on, each with its PROXY protocol and TLS.

Besides the listeners, `listen` returns where each address was written, because the clash with
the metrics address can only be found once both sections are read, and its message must point
at the line of the listener involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectproxy.config.model import Listener, ListenerTLS, ProxyProtocolMode
from connectproxy.configfile.checker import Checker, Section, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.files import readable_file
from connectproxy.configfile.netvalues import address
from connectproxy.configfile.scalars import boolean, choice

__all__ = ["ListenerPlaces", "listen"]

# Where each listening (host, port) was written.
ListenerPlaces = dict[tuple[str, int], Where]

_PROXY_PROTOCOLS: tuple[ProxyProtocolMode, ...] = ("off", "v1", "v2", "any")
_DEFAULT_LISTENER = Listener("::", 3128)


def listen(check: Checker, value: Any, where: Where) -> tuple[tuple[Listener, ...], ListenerPlaces]:
    """The listeners, and where each was written; two on one address are refused here."""
    # One listener may be written without the list around it.
    is_list = isinstance(value, list | tuple)
    listed = items(check, value, where) if is_list else [(value, where)]
    if not listed:
        raise check.error(
            where, "needs at least one listener; remove the key for the default [::]:3128"
        )
    listeners: list[Listener] = []
    places: ListenerPlaces = {}
    for entry, at in listed:
        listener = _listener(check, entry, at)
        first = places.get((listener.host, listener.port))
        if first is not None:
            raise check.error(at, f"{listener.address} is already listed at {first.describe()}")
        places[(listener.host, listener.port)] = at
        listeners.append(listener)
    return tuple(listeners), places


def _listener(check: Checker, value: Any, where: Where) -> Listener:
    if not isinstance(value, Mapping):
        host, port = address(check, value, where)
        return Listener(host, port)
    section = Section(check, value, where, ("address", "proxy_protocol", "tls"))
    host, port = address(check, *section.require("address", 'for example "0.0.0.0:3128"'))
    proxy_protocol = section.get_or(
        "proxy_protocol", _proxy_protocol, _DEFAULT_LISTENER.proxy_protocol
    )
    tls = section.get_or("tls", _listener_tls, None)
    return Listener(host, port, proxy_protocol, tls)


def _proxy_protocol(check: Checker, value: Any, where: Where) -> ProxyProtocolMode:
    if value is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    return choice(check, value, where, _PROXY_PROTOCOLS)


def _listener_tls(check: Checker, value: Any, where: Where) -> ListenerTLS:
    keys = ("cert_file", "key_file", "client_ca_file", "require_client_cert")
    section = Section(check, value, where, keys)
    cert = readable_file(check, *section.require("cert_file", "the server certificate (PEM)"))
    key = readable_file(check, *section.require("key_file", "the server's private key (PEM)"))
    client_ca = section.get_or("client_ca_file", readable_file, None)
    require = section.get_or("require_client_cert", boolean, False)
    if require and client_ca is None:
        raise check.error(
            section.where_of("require_client_cert"),
            "needs client_ca_file: the CA that signs the client certificates to accept",
        )
    return ListenerTLS(cert, key, client_ca, require)
