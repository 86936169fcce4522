"""The warnings and the refusal of one squid.conf translation (docs/squid-migration.md).

Every way the translation differs from Squid is reported as "FILE:LINE: message", and the
operator reads them in the order of the lines they are about, not in the order the translator
happened to find them: the directives are read first and the http_access lines are reasoned
about afterwards, so a warning about line 3 may be found after one about line 40. Each warning
is therefore kept with the position of its directive and sorted at the end; warnings about one
directive keep the order they were found in.
"""

from __future__ import annotations

from typing import Protocol

from connectproxy.configfile.squid.parse import Directive

__all__ = ["Located", "Report", "SquidImportError", "refuse"]


class SquidImportError(Exception):
    """squid.conf cannot be translated; the message says where and why (exit status 2)."""


class Located(Protocol):
    """A line warnings can be about: an http_access line, named by its text."""

    @property
    def index(self) -> int: ...

    @property
    def directive(self) -> Directive: ...

    @property
    def text(self) -> str: ...


class Report:
    """The warnings found so far, each with the position of the directive it is about."""

    def __init__(self) -> None:
        self._found: list[tuple[int, int, str]] = []

    def warn(self, index: int, where: str, message: str) -> None:
        """Record "FILE:LINE: message"; `index` (directive order) sorts the final list."""
        self._found.append((index, len(self._found), f"{where}: {message}"))

    def warn_line(self, line: Located, message: str) -> None:
        """A warning about an http_access line, quoting the line."""
        self.warn(line.index, line.directive.where, f"{line.text}: {message}")

    def warnings(self) -> tuple[str, ...]:
        """Every warning, in the order of the directives they are about."""
        return tuple(text for _, _, text in sorted(self._found))


def refuse(directive: Directive, message: str) -> SquidImportError:
    """The error that stops the translation at `directive`, for the caller to raise."""
    return SquidImportError(f"{directive.where}: {message}")
