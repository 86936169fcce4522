"""The mapping and sequence types a config's YAML is read into: dict and list that also carry the
lines their keys and items were written on, so a config error can name the line.

Both readers build them: `yamlsubset` (the plain subset, without PyYAML) and `yamlreader`
(everything else, with PyYAML), with `line_map` and `line_list`. Validation only reads the extras
when present, which is why a mapping built in Python (the squid.conf translator) goes through the
same checks, just without lines.

The classes have slots and no `__init__` of their own: a large config holds thousands of them,
and a Python-level `__init__` made each cost three times what `line_map` and `line_list` cost
(3 ms of explain's 200 on the benchmark's large config).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LineList", "LineMap", "line_list", "line_map"]


class LineMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key, and any key written twice.

    Duplicates are recorded rather than raised here so the validator can report them with the
    full key path, which the YAML layer does not know. Made by `line_map`.
    """

    __slots__ = ("duplicates", "key_lines", "line")

    line: int
    key_lines: dict[Any, int]
    # (key, line of the repetition, line of the first occurrence)
    duplicates: list[tuple[Any, int, int]]


class LineList(list[Any]):
    """A YAML sequence that remembers the line of each item. Made by `line_list`."""

    __slots__ = ("item_lines", "line")

    line: int
    item_lines: list[int]


def line_map(line: int) -> LineMap:
    """An empty mapping that starts on `line`."""
    result = LineMap()
    result.line = line
    result.key_lines = {}
    result.duplicates = []
    return result


def line_list(line: int) -> LineList:
    """An empty sequence that starts on `line`."""
    result = LineList()
    result.line = line
    result.item_lines = []
    return result
