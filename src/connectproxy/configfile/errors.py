"""How a configuration error names its place: file, key path and line.

Every message a user sees about the config goes through `locate`, so all of them read the same
way (`FILE:LINE: KEY.PATH: message`) and an editor or terminal can jump to the line. `Where` is
the place of one value while it is checked; it travels down the sections so a message deep in
`upstream.proxies[1]` still knows its whole key path.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ConfigError", "Where", "locate"]


def locate(file: str, line: int | None, key_path: str | None, message: str) -> str:
    """Format as FILE:LINE: KEY.PATH: message, leaving out what is unknown.

    FILE:LINE first because editors and terminals turn it into a link to the line.
    """
    where = file if line is None else f"{file}:{line}"
    return f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}"


class ConfigError(Exception):
    """A configuration the proxy refuses to run with. `str()` is the whole message for the user."""

    def __init__(self, file: str, key_path: str | None, line: int | None, message: str) -> None:
        super().__init__(file, key_path, line, message)
        self.file = file
        self.key_path = key_path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return locate(self.file, self.line, self.key_path, self.message)


@dataclasses.dataclass(frozen=True)
class Where:
    """Where a value sits: its key path (None at the top level) and line (None if unknown).

    Key paths index lists from 0, as Kubernetes and jq do.
    """

    path: str | None
    line: int | None

    def key(self, name: str, line: int | None) -> Where:
        return Where(f"{self.path}.{name}" if self.path else name, line)

    def index(self, label: int | str, line: int | None) -> Where:
        return Where(f"{self.path or ''}[{label}]", line)

    def describe(self) -> str:
        """For "already used at ..." messages."""
        path = self.path or "the top level"
        return path if self.line is None else f"{path} (line {self.line})"
