"""Which open tunnels a close request means: the filter of `POST /api/tunnels/close` and of
`connectproxy tunnels --close`, parsed and matched without any I/O.

Every key given must match (they combine with AND), so adding a key only ever narrows the set.
A filter with no key at all is refused rather than read as "every tunnel": closing all of them
is too big a step to take by leaving something out. `host` is a domain pattern as in the
allowlist (`.example.com` the domain and its subdomains, `*.example.com` subdomains only,
`example.com` exactly) or an IP address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from connectproxy.config.frozen import Frozen
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPAddress

__all__ = ["FILTER_KEYS", "FilterError", "TunnelFilter", "parse_filter", "parse_filter_args"]

FILTER_KEYS = ("id", "client", "user", "policy", "host")
_MAX_VALUE = 512


class FilterError(ValueError):
    """A filter that cannot be used; the message says why, for a 400 or the command line."""


class TunnelFilter(Frozen):
    # A frozen value without dataclasses, which `explain` does not import (config/frozen.py):
    # cli.py imports this module for the tunnels command's help.
    _fields = ("id", "client", "user", "policy", "host", "host_ip")

    id: int | None
    client: str | None
    user: str | None
    policy: str | None
    host: DomainPattern | None
    host_ip: IPAddress | None

    def __init__(
        self,
        id: int | None = None,
        client: str | None = None,
        user: str | None = None,
        policy: str | None = None,
        host: DomainPattern | None = None,
        host_ip: IPAddress | None = None,
    ) -> None:
        self._set(id=id, client=client, user=user, policy=policy, host=host, host_ip=host_ip)

    def matches(
        self,
        tunnel_id: int,
        client: str | None,
        user: str | None,
        policy: str | None,
        host: str,
        ip: IPAddress | None,
    ) -> bool:
        """`host` is the tunnel's normalised target host, `ip` its address when the target
        was one."""
        if self.id is not None and tunnel_id != self.id:
            return False
        if self.client is not None and client != self.client:
            return False
        if self.user is not None and user != self.user:
            return False
        if self.policy is not None and policy != self.policy:
            return False
        if self.host_ip is not None:
            return ip is not None and ip == self.host_ip
        return self.host is None or (ip is None and self.host.matches(host))


def parse_filter(data: object) -> TunnelFilter:
    """A filter from a decoded JSON body: an object with some of `FILTER_KEYS`."""
    if not isinstance(data, Mapping):
        raise FilterError('the body must be a JSON object such as {"client": "plc-7"}')
    unknown = [str(key) for key in data if key not in FILTER_KEYS]
    if unknown:
        raise FilterError(
            f"unknown filter key {unknown[0]!r}; valid keys: {', '.join(FILTER_KEYS)}"
        )
    tunnel_id = _tunnel_id(data.get("id"))
    texts = {key: _text(key, data.get(key)) for key in ("client", "user", "policy", "host")}
    pattern: DomainPattern | None = None
    host_ip: IPAddress | None = None
    host = texts["host"]
    if host is not None:
        try:
            host_ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            try:
                pattern = parse_domain_pattern(host)
            except ValueError as exc:
                raise FilterError(f"host {host!r} is not a domain pattern: {exc}") from None
    if tunnel_id is None and all(text is None for text in texts.values()):
        # {} and {"client": null} alike: nothing narrows the set.
        raise FilterError(
            "empty filter: give at least one of " + ", ".join(FILTER_KEYS) + " (leaving the "
            "filter out never means every tunnel)"
        )
    return TunnelFilter(
        id=tunnel_id,
        client=texts["client"],
        user=texts["user"],
        policy=texts["policy"],
        host=pattern,
        host_ip=host_ip,
    )


def parse_filter_args(args: list[str]) -> dict[str, object]:
    """`KEY=VALUE` words of the command line as the JSON object the API takes; checked by
    `parse_filter` too, so a mistake is reported before anything is sent."""
    data: dict[str, object] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise FilterError(
                f"{arg!r} is not KEY=VALUE; keys: {', '.join(FILTER_KEYS)} (e.g. client=plc-7)"
            )
        if key in data:
            raise FilterError(f"{key}= given twice; a tunnel has one {key}")
        data[key] = value
    parse_filter(data)
    return data


def _tunnel_id(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FilterError("id must be a tunnel id, a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    raise FilterError("id must be a tunnel id, a whole number")


def _text(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FilterError(f"{key} must be a non-empty string")
    if len(value) > _MAX_VALUE:
        raise FilterError(f"{key} is longer than {_MAX_VALUE} characters")
    return value
