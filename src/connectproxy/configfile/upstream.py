"""The `upstream` section: the proxies tunnels go through, and the domains that bypass them.

An upstream URL is only scheme://host:port. Credentials belong in `username` and `password_file`,
not in the URL, where they would end up in logs and process listings; messages about the URL
never repeat it, since it may hold exactly such a credential.
"""

from __future__ import annotations

from typing import Any, Literal

from connectproxy.config.model import Strategy, Upstream, UpstreamProxy
from connectproxy.configfile.checker import Checker, Section, items
from connectproxy.configfile.errors import Where
from connectproxy.configfile.files import readable_file, secret_file
from connectproxy.configfile.netvalues import domain_patterns, split_host_port
from connectproxy.configfile.scalars import basic_user_name, choice, string

__all__ = ["PROXY_KEYS", "upstream"]

PROXY_KEYS = (
    "url",
    "username",
    "password",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
)
_STRATEGIES: tuple[Strategy, ...] = ("failover", "round_robin")
_DEFAULT = Upstream()


def upstream(check: Checker, value: Any, where: Where) -> Upstream:
    section = Section(check, value, where, ("proxies", "strategy", "direct_domains"))
    proxies_value, proxies_at = section.require(
        "proxies", "list the upstream proxies (or remove upstream to connect directly)"
    )
    proxies = tuple(_proxy(check, item, at) for item, at in items(check, proxies_value, proxies_at))
    if not proxies:
        raise check.error(
            proxies_at, "needs at least one proxy (or remove upstream to connect directly)"
        )
    return Upstream(
        proxies=proxies,
        strategy=section.get_or("strategy", _strategy, _DEFAULT.strategy),
        direct_domains=section.get_or("direct_domains", domain_patterns, ()),
    )


def _strategy(check: Checker, value: Any, where: Where) -> Strategy:
    return choice(check, value, where, _STRATEGIES)


def _parse_proxy_url(url: str) -> tuple[Literal["http", "https"], str, int]:
    """An upstream URL is only scheme://host:port. Messages never repeat the URL: an operator
    may have put credentials in it, which is exactly one of the mistakes refused here."""
    scheme_text, separator, rest = url.partition("://")
    scheme_text = scheme_text.lower()
    if not separator or scheme_text not in ("http", "https"):
        raise ValueError('must start with http:// or https://, as in "http://proxy.example:8080"')
    scheme: Literal["http", "https"] = "https" if scheme_text == "https" else "http"
    if "@" in rest:
        raise ValueError(
            "must not contain credentials; set username and password_file for the upstream instead"
        )
    authority, _, path = rest.partition("/")
    if path or "?" in authority or "#" in authority:
        raise ValueError("must not have a path, query or fragment: only scheme://host:port")
    try:
        host, port = split_host_port(authority, example=f"{scheme}://proxy.example:8080")
    except ValueError as error:
        raise ValueError(f"must be {scheme}://host:port: {error}") from None
    return scheme, host, port


def _proxy(check: Checker, value: Any, where: Where) -> UpstreamProxy:
    section = Section(check, value, where, PROXY_KEYS)
    url_value, url_at = section.require("url", 'for example "http://proxy.example:8080"')
    url = string(check, url_value, url_at)
    try:
        scheme, host, port = _parse_proxy_url(url)
    except ValueError as error:
        raise check.error(url_at, str(error)) from None
    username = section.get_or("username", basic_user_name, None)
    password = _password(check, section)
    if password is not None and username is None:
        raise check.error(section.where_of("username"), "is required when a password is given")
    ca_file = section.get_or("ca_file", readable_file, None)
    cert_file = section.get_or("cert_file", readable_file, None)
    key_file = section.get_or("key_file", readable_file, None)
    if scheme == "http":
        for key, path in (
            ("ca_file", ca_file),
            ("cert_file", cert_file),
            ("key_file", key_file),
        ):
            if path is not None:
                raise check.error(
                    section.where_of(key),
                    "only applies to an https:// upstream; remove it or change the url",
                )
    if (cert_file is None) != (key_file is None):
        present = "cert_file" if cert_file is not None else "key_file"
        raise check.error(section.where_of(present), "cert_file and key_file go together")
    return UpstreamProxy(
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


def _password(check: Checker, section: Section) -> str | None:
    inline = section.get("password")
    from_file = section.get("password_file")
    if inline is not None and from_file is not None:
        raise check.error(inline[1], "set either password or password_file, not both")
    if inline is not None:
        password = string(check, *inline)
        check.warn(
            inline[1],
            "the upstream password is written in the config file; "
            "prefer password_file (a file only the proxy's user can read)",
        )
        return password
    if from_file is not None:
        return secret_file(check, *from_file)
    return None
