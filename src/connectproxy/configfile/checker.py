"""One validation run, and the shapes every section is made of: mappings with fixed keys, lists.

The section modules (`listeners`, `allow`, `identities`, `upstream`, `destinations`, `runtime`)
are written as converters `convert(check, value, where) -> value`: `check` is the run (the file's
name and folder, the warnings so far), `value` what the YAML held and `where` its place. They
share no other state, so a section can be checked on its own, and one such as `allow` can be
reused wherever its keys appear again.

Conventions a reader needs: a key set to null (for example `upstream:` with all of its children
commented out) counts as absent and takes the default; unknown keys and keys written twice are
errors, since a typo must never silently weaken policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from connectproxy.configfile.errors import ConfigError, Where, locate
from connectproxy.configfile.yamlreader import LineList, LineMap

__all__ = ["Checker", "Section", "describe", "entries", "items"]

_T = TypeVar("_T")
_D = TypeVar("_D")


class Checker:
    """One validation run: the file's name and folder, and what it found along the way."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        # Relative paths in the file are relative to its folder (docs/configuration.md).
        self.base_dir = base_dir
        self.warnings: list[str] = []
        # Client and user names label metrics and logs, so one name must mean one entry across
        # both sections; the first place each was used, for the message about the second.
        self.names: dict[str, Where] = {}
        # Every policy name a client or user is bound to, with its place: whether each is
        # defined is known only once `policies` is read, wherever it is in the file.
        self.policy_refs: list[tuple[str, Where]] = []
        # `users` entries without password_hash (their password is in the htpasswd file), and
        # the names that file holds once read: whether each entry has its line is known only
        # once both sections are read, in whatever order the file has them.
        self.password_file_users: list[tuple[str, Where]] = []
        self.htpasswd_names: frozenset[str] = frozenset()

    def error(self, where: Where, message: str) -> ConfigError:
        return ConfigError(self.source, where.path, where.line, message)

    def warn(self, where: Where, message: str) -> None:
        """Valid but probably not what the operator meant: reported at start-up, not refused."""
        self.warnings.append(locate(self.source, where.line, where.path, message))


def describe(value: Any) -> str:
    """Name a YAML value's type for a message, never quoting it (it may be a secret)."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    # Only PyYAML makes dates, and only then is datetime worth importing.
    from datetime import date

    if isinstance(value, date):
        return "a date (quote it)"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def entries(check: Checker, value: Any, where: Where) -> list[tuple[Any, Any, Where]]:
    """(key, value, place of the key) of a mapping, after refusing duplicate keys.

    A list rather than a generator: every mapping of the file passes through here, and building
    the list costs less than resuming a generator for each key.
    """
    # dict first: both readers make dicts, and isinstance against the Mapping ABC costs more.
    if not isinstance(value, dict) and not isinstance(value, Mapping):
        raise check.error(where, f"must be a mapping (key: value lines), not {describe(value)}")
    if not isinstance(value, LineMap):
        return [(key, item, where.key(str(key), None)) for key, item in value.items()]
    if value.duplicates:
        key, line, first_line = value.duplicates[0]
        raise check.error(
            where.key(str(key), line),
            f"key written twice (first on line {first_line}); keep one",
        )
    key_lines = value.key_lines
    return [(key, item, where.key(str(key), key_lines.get(key))) for key, item in value.items()]


def items(check: Checker, value: Any, where: Where) -> list[tuple[Any, Where]]:
    """The items of a list with the place of each."""
    # A tuple of types, not `list | tuple`: compiled, that is two type checks where the union is
    # an object made on every call.
    if not isinstance(value, (list, tuple)):
        raise check.error(where, f"must be a list, not {describe(value)}")
    lines: Sequence[int | None] = (
        value.item_lines if isinstance(value, LineList) else [None] * len(value)
    )
    return [(item, where.index(i, lines[i])) for i, item in enumerate(value)]


def _unknown_key(key: Any, keys: Sequence[str]) -> str:
    valid = ", ".join(keys)
    if not isinstance(key, str):
        return f"unknown key {key!r} (keys are names); valid keys here: {valid}"
    import difflib  # for this message only: its import is 1% of explain's time

    close = difflib.get_close_matches(key, keys, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {suggestion}valid keys here: {valid}"


class Section:
    """A YAML mapping with a fixed set of keys; unknown and duplicate keys fail on construction."""

    def __init__(self, check: Checker, value: Any, where: Where, keys: Sequence[str]) -> None:
        self.where = where
        self.check = check
        self._items: dict[str, tuple[Any, Where]] = {}
        for key, item, item_where in entries(check, value, where):
            if not isinstance(key, str) or key not in keys:
                raise check.error(item_where, _unknown_key(key, keys))
            self._items[key] = (item, item_where)

    def has(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> tuple[Any, Where] | None:
        """The value and its place; None when the key is absent or null (the default applies)."""
        item = self._items.get(key)
        if item is None or item[0] is None:
            return None
        return item

    def get_or(
        self, key: str, convert: Callable[[Checker, Any, Where], _T], default: _D
    ) -> _T | _D:
        """`convert(check, value, where)` for a present key, else the default."""
        item = self.get(key)
        if item is None:
            return default
        # Two arguments, not *item: compiled, a call with a fixed number of arguments passes
        # them on the stack, where *item builds a tuple for the callee to take apart.
        value, where = item
        return convert(self.check, value, where)

    def where_of(self, key: str) -> Where:
        """The place of a key, or of the section when the key is absent."""
        item = self._items.get(key)
        return item[1] if item is not None else self.where.key(key, self.where.line)

    def require(self, key: str, hint: str) -> tuple[Any, Where]:
        item = self.get(key)
        if item is None:
            raise self.check.error(self.where_of(key), f"is required: {hint}")
        return item
