"""Translating a squid.conf into connectproxy's configuration (docs/squid-migration.md).

Squid and connectproxy decide differently. Squid walks its `http_access` lines top to bottom and
the first line whose ACLs all match answers. connectproxy has one fixed shape:
a client is *admitted* (by source network or by password), and then the destination must be in
one of the *policies* (ports and domains) bound to that client (SPEC section 3.2); each allow
line becomes a policy of its own. Wherever that shape cannot say what Squid says, the
translation is made *stricter* when it can and reports a warning "FILE:LINE: message" in every
case; it never widens access silently.

This module runs one translation and writes its result; the work is done by the modules it calls,
each with one job:

- directives.py: listeners, authentication, timeouts, and the directives that are ignored;
- upstream.py: `cache_peer` parents and `never_direct`;
- acls.py: `acl` lines and the `http_access` lines that use them;
- rules.py: the rule algebra, what each allow line lets through after the deny lines above it;
- access.py: the clients, users and policies those allow lines add up to;
- sets.py: the set algebra on networks, domain patterns and ports the other modules share;
- report.py: the warnings, in squid.conf order, and the error that stops a translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from connectproxy.config.model import DEFAULT_DENY_NETWORKS
from connectproxy.configfile.squid.access import access
from connectproxy.configfile.squid.acls import Acls, Rule
from connectproxy.configfile.squid.directives import EVERY_ADDRESS, Settings
from connectproxy.configfile.squid.parse import Directive, SquidConfError, read_squid_conf
from connectproxy.configfile.squid.report import Report, SquidImportError
from connectproxy.configfile.squid.rules import evaluate
from connectproxy.configfile.squid.sets import collapse, ipv4_mapped, net_text
from connectproxy.configfile.squid.upstream import Peers

__all__ = ["Translation", "translate", "translate_file"]

# Squid's listening port when squid.conf has no http_port.
_DEFAULT_LISTEN_PORT = 3128


@dataclass(frozen=True)
class Translation:
    """The translated configuration and every way it differs from what Squid did."""

    mapping: dict[str, Any]
    warnings: tuple[str, ...]
    source: str = ""

    def to_yaml(self) -> str:
        """The configuration file an operator reviews and keeps, warnings included as comments."""
        lines = [
            f"# connectproxy configuration translated from {self.source or 'squid.conf'}",
            "# by `connectproxy import-squid`. Squid answers with the first matching http_access",
            "# line; connectproxy admits clients and checks the policies bound to them, so this",
            "# translation can be stricter than Squid. Every difference found is listed below:",
            "# review them.",
            "#",
        ]
        if self.warnings:
            lines.append("# Warnings:")
            lines.extend(f"#   {warning}" for warning in self.warnings)
        else:
            lines.append("# No differences from Squid were found.")
        lines.append("")
        body = yaml.safe_dump(self.mapping, sort_keys=False, default_flow_style=False, width=100)
        return "\n".join(lines) + "\n" + body


def translate_file(path: Path) -> Translation:
    """Read `path` (and its includes) and translate it: the one entry point for the CLI."""
    try:
        directives = read_squid_conf(path)
    except SquidConfError as error:
        raise SquidImportError(str(error)) from None
    return translate(directives, str(path))


def translate(directives: Sequence[Directive], source: str) -> Translation:
    """Translate directives as `read_squid_conf` returns them; `source` names the main file."""
    return _Translator(source).run(directives)


class _Translator:
    """One translation run: reads every directive, then reasons about the http_access lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.report = Report()
        self.settings = Settings(self.report)
        self.peers = Peers(self.report)
        self.acls = Acls(self.report)
        self.rules: list[Rule] = []
        # The last directive read: where Squid's built-in defaults take over.
        self.end: tuple[int, str] = (0, f"{source}:1")

    def run(self, directives: Sequence[Directive]) -> Translation:
        for index, directive in enumerate(directives):
            self.directive(index, directive)
            self.end = (index, directive.where)
        self.settings.report_ignored()
        mapping = self.build()
        return Translation(mapping=mapping, warnings=self.report.warnings(), source=self.source)

    def directive(self, index: int, d: Directive) -> None:
        match d.name:
            case "acl":
                self.acls.define(index, d)
            case "http_access":
                rule = self.acls.rule(index, d)
                if rule is not None:
                    self.rules.append(rule)
            case "cache_peer":
                self.peers.cache_peer(index, d)
            case "never_direct":
                self.peers.never_direct.append((index, d))
            case _:
                self.settings.read(index, d)

    def build(self) -> dict[str, Any]:
        """The configuration mapping, in the order of the keys of docs/configuration.md."""
        settings = self.settings
        if settings.saw_http_port and not settings.listen:
            raise SquidImportError(
                f"{self.source}: no http_port can be translated (see the warnings); "
                "connectproxy needs at least one forward-proxy listener"
            )
        mapping: dict[str, Any] = {}
        mapping["listen"] = settings.listen or [f"[{EVERY_ADDRESS}]:{_DEFAULT_LISTEN_PORT}"]
        evaluation = evaluate(self.rules, self.end, self.report)
        self.acls.note_unused_sources(self.rules)
        mapping.update(access(evaluation.terms, self.rules, settings.htpasswd, self.report))
        if evaluation.denied_networks:
            # Setting the key replaces the defaults, so they are written out first (without
            # their IPv4-mapped forms: connectproxy checks a mapped address as IPv4 anyway).
            defaults = [n for n in DEFAULT_DENY_NETWORKS if not ipv4_mapped(n)]
            denied = (*defaults, *collapse(evaluation.denied_networks))
            mapping["destinations"] = {"deny_networks": [net_text(n) for n in denied]}
        upstream = self.peers.upstream()
        if upstream is not None:
            mapping["upstream"] = upstream
        if settings.timeouts:
            mapping["timeouts"] = {k: _number(v) for k, v in settings.timeouts.items()}
        return mapping


def _number(value: float) -> int | float:
    """30.0 seconds is written `30`, as an operator would write it."""
    return int(value) if value.is_integer() else value
