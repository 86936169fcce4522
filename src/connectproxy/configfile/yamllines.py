"""The mapping and sequence types a config's YAML is read into: dict and list that also carry the
lines their keys and items were written on, so a config error can name the line.

Both readers build them: `yamlsubset` (the plain subset, without PyYAML) and `yamlreader`
(everything else, with PyYAML). Validation only reads the extras when present, which is why a
mapping built in Python (the squid.conf translator) goes through the same checks, just without
lines.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LineList", "LineMap"]


class LineMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key, and any key written twice.

    Duplicates are recorded rather than raised here so the validator can report them with the
    full key path, which the YAML layer does not know.
    """

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        # (key, line of the repetition, line of the first occurrence)
        self.duplicates: list[tuple[Any, int, int]] = []


class LineList(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []
