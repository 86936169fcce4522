"""`cache_peer ... parent` and `never_direct` into `upstream` (docs/squid-migration.md).

A site proxy that chains to a corporate proxy has parents in squid.conf; connectproxy sends a
tunnel through an upstream either always or never, so `never_direct allow all` is the only form
it can keep, and a parent without it is reported (Squid might have connected directly). Fixed
credentials (`login=user:password`) become an inline password, which is reported too: it belongs
in a password file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectproxy.configfile.squid.directives import anchored_path
from connectproxy.configfile.squid.parse import Directive
from connectproxy.configfile.squid.report import Report, refuse

__all__ = ["Peers"]

# cache_peer options that change nothing for a CONNECT-only parent.
_HARMLESS_PEER_OPTIONS = {"no-query", "default", "proxy-only", "no-digest", "no-netdb-exchange"}
# cache_peer TLS file options (Squid 4+ names and the older ssl* ones) → upstream.proxies keys.
_PEER_FILE_OPTIONS = {
    "tls-cafile": "ca_file",
    "sslcafile": "ca_file",
    "tls-cert": "cert_file",
    "sslcert": "cert_file",
    "tls-key": "key_file",
    "sslkey": "key_file",
}


@dataclass(frozen=True)
class _Peer:
    directive: Directive
    index: int
    entry: dict[str, Any]
    round_robin: bool


class Peers:
    """The parents and never_direct lines read so far, and the upstream they make."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.peers: list[_Peer] = []
        self.never_direct: list[tuple[int, Directive]] = []

    def cache_peer(self, index: int, d: Directive) -> None:
        if len(d.args) < 4:
            raise refuse(d, "cache_peer needs: hostname type http-port icp-port [options]")
        host, kind, port_text, _icp, *options = d.args
        if kind != "parent":
            self.report.warn(
                index, d.where, f"cache_peer of type {kind} ignored: only parents chain"
            )
            return
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise refuse(d, f"cache_peer port {port_text!r} must be a number from 1 to 65535")
        if "originserver" in options:
            self.report.warn(index, d.where, "cache_peer originserver ignored: it is not a proxy")
            return
        scheme = "https" if {"ssl", "tls"} & set(options) else "http"
        shown_host = f"[{host}]" if ":" in host else host
        entry: dict[str, Any] = {"url": f"{scheme}://{shown_host}:{port_text}"}
        ignored = []
        for option in options:
            key, _, value = option.partition("=")
            if key == "login":
                self.login(index, d, value, entry)
            elif key in _PEER_FILE_OPTIONS and value:
                entry[_PEER_FILE_OPTIONS[key]] = str(anchored_path(index, d, value, self.report))
            elif option in ("ssl", "tls", "round-robin") or key == "name":
                continue
            elif option not in _HARMLESS_PEER_OPTIONS:
                ignored.append(key)  # the name only: values may be secrets
        if ignored:
            self.report.warn(index, d.where, f"cache_peer options ignored: {' '.join(ignored)}")
        self.peers.append(_Peer(d, index, entry, "round-robin" in options))

    def login(self, index: int, d: Directive, value: str, entry: dict[str, Any]) -> None:
        user, sep, password = value.partition(":")
        if value in ("PASS", "PASSTHRU", "PROXYPASS", "NEGOTIATE") or not sep or user in ("", "*"):
            self.report.warn(
                index,
                d.where,
                f"cache_peer login={value.split(':')[0]} ignored: connectproxy only sends "
                "fixed credentials (login=user:password) to an upstream",
            )
            return
        entry["username"] = user
        entry["password"] = password
        self.report.warn(
            index,
            d.where,
            "the upstream password is written inline in the translated config; move it to a "
            "file and set password_file instead",
        )

    def upstream(self) -> dict[str, Any] | None:
        """The `upstream` section, or None when every tunnel connects directly."""
        for index, d in self.never_direct:
            if not self.peers:
                self.report.warn(
                    index,
                    d.where,
                    "never_direct without a cache_peer parent: Squid could forward nothing; "
                    "connectproxy connects directly",
                )
            elif d.args != ("allow", "all"):
                self.report.warn(
                    index,
                    d.where,
                    "never_direct translated as `never_direct allow all`: every tunnel goes "
                    "through the upstream",
                )
        if not self.peers:
            return None
        if not self.never_direct:
            first = self.peers[0]
            self.report.warn(
                first.index,
                first.directive.where,
                "no `never_direct allow all`: Squid may connect directly (for example when the "
                "parent is down); connectproxy sends every tunnel through the upstream",
            )
        upstream: dict[str, Any] = {"proxies": [peer.entry for peer in self.peers]}
        if any(peer.round_robin for peer in self.peers):
            upstream["strategy"] = "round_robin"
        return upstream
