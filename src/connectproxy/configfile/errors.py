"""How a configuration error names its place: file, key path and line.

Every message a user sees about the config goes through `locate`, so all of them read the same
way (`FILE:LINE: KEY.PATH: message`) and an editor or terminal can jump to the line. `Where` is
the place of one value while it is checked; it travels down the sections so a message deep in
`upstream.proxies[1]` still knows its whole key path.
"""

from __future__ import annotations

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


class Where:
    """Where a value sits: its key path (None at the top level) and line (None if unknown).

    Key paths index lists from 0, as Kubernetes and jq do. A place is made for every value the
    file holds (tens of thousands in a large config) but its path is read only for a message, so
    a place keeps its parent and its own label and spells the path out on first use. Immutable,
    like the frozen dataclass it replaced; only the spelled-out path is remembered.
    """

    __slots__ = ("_label", "_parent", "_path", "line")

    def __init__(self, path: str | None, line: int | None) -> None:
        self._path = path
        self._parent: Where | None = None
        self._label: str | int = ""
        self.line = line

    @property
    def path(self) -> str | None:
        parent = self._parent
        if parent is None:
            return self._path
        above = parent.path
        label = self._label
        if isinstance(label, int):  # a list index
            path = f"{above or ''}[{label}]"
        else:
            path = f"{above}.{label}" if above else label
        self._path = path
        self._parent = None
        return path

    def key(self, name: str, line: int | None) -> Where:
        child = Where(None, line)
        child._parent = self
        child._label = name
        return child

    def index(self, label: int | str, line: int | None) -> Where:
        if isinstance(label, str):  # a label that is not a position: rare, spelled out now
            return Where(f"{self.path or ''}[{label}]", line)
        child = Where(None, line)
        child._parent = self
        child._label = label
        return child

    def describe(self) -> str:
        """For "already used at ..." messages."""
        path = self.path or "the top level"
        return path if self.line is None else f"{path} (line {self.line})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Where):
            return NotImplemented
        return (self.path, self.line) == (other.path, other.line)

    def __hash__(self) -> int:
        return hash((self.path, self.line))

    def __repr__(self) -> str:
        return f"Where(path={self.path!r}, line={self.line!r})"
