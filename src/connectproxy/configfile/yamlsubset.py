"""The plain subset of YAML most configs are written in, read without PyYAML.

Why: `connectproxy explain` must answer in well under a second on a config of 10,000 domain
patterns, and PyYAML cannot read one that fast even with libyaml: it makes a Python object and
two position marks for each of the file's 34,000 parse events before the first value is built.
Config files are nearly always written in a small part of YAML (block mappings and sequences,
one-line flow lists, quoted strings, plain words and numbers, comments), and that part can be read
line by line with a few regular expressions at a fraction of the cost.

The promise that makes this safe: for any text, `read_subset` either returns exactly what
`yamlreader` builds with PyYAML (the same values, `LineMap`/`LineList` with the same lines and
the same duplicate keys) or `None`, and then the caller reads the text with PyYAML. Whatever is
not obviously inside the subset gives `None`: anchors, tags, block scalars, multi-line or escaped
strings, flow mappings, document markers, tabs, non-ASCII characters, and every plain word YAML
1.1 would read as something other than a string or a decimal number (`yes`, `off`, `null`,
`0x1f`, `1:20`, dates...). A syntax error is never reported from here either: PyYAML reports it,
with its line. tests/unit/configfile/test_yamlsubset.py holds the promise against PyYAML.
"""

from __future__ import annotations

import re
from typing import Any

from connectproxy.configfile.yamllines import LineList, LineMap, line_list, line_map

__all__ = ["read_subset"]


class _Outside(Exception):
    """The text leaves the subset: read it with PyYAML instead."""


# `key:` then the end of the line, or spaces and a value (or a comment): the value starts where
# the match ends. Matching the value too (`(.*)`) ran the expression over every character of the
# file's long lists of domains, 2% of explain's instructions on the benchmark's large config.
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*):(?: +|\Z)")
# A word YAML 1.1 reads as a string (given it is not one of _NOT_STRINGS), or as a decimal int or
# float. Plain words with ':' or '#' or spaces, or starting with anything else, are left to PyYAML.
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_./\-]*")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_DOUBLE = re.compile(r'"([^"\\]*)"')
_SINGLE = re.compile(r"'([^']*)'(?!')")
# What may follow a complete value on its line: spaces, and a comment after at least one.
_REST = re.compile(r"(?: +#.*)? *")
# The common one-line list of double-quoted strings, read with one expression.
_QUOTED_LIST = re.compile(r'\[ *((?:"[^"\\]*" *, *)*"[^"\\]*") *\]')
_QUOTED_ITEM = re.compile(r'"([^"\\]*)"')
_FLOW_SEPARATOR = re.compile(r" *, *")
# Words YAML 1.1 resolves to booleans or null, in any case, are not strings.
_NOT_STRINGS = frozenset(
    ("y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "nan", "inf")
)

_PRINTABLE_OR_NEWLINE = bytes(range(0x20, 0x7F)) + b"\n"

# One content line: (1-based line number, indentation, the text after it).
_Line = tuple[int, int, str]


def read_subset(text: str) -> tuple[Any, int | None] | None:
    """The document's data and the line it starts on, as `yamlreader.read_yaml` gives them, or
    None when the text is not (obviously) in the subset."""
    # Anything but printable ASCII and newlines (tabs, carriage returns, other controls, any
    # non-ASCII character) sends the text to PyYAML, which also knows which characters YAML
    # refuses and says so with the line. Two passes in C, a tenth of a regular expression's: one
    # to see it is ASCII, one that deletes every printable character and newline (an eighth of
    # what str.isprintable costs per character).
    if not text.isascii() or text.encode("ascii").translate(None, _PRINTABLE_OR_NEWLINE):
        return None
    lines: list[_Line] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.lstrip(" ")
        if not stripped or stripped[0] == "#":
            continue
        lines.append((number, len(raw) - len(stripped), stripped.rstrip(" ")))
    if not lines:
        return None, None  # only comments and blank lines: PyYAML's empty document
    if lines[0][1] != 0:
        return None
    try:
        data, end = _block(lines, 0, 0)
    except _Outside:
        return None
    if end != len(lines) or not isinstance(data, LineMap):
        return None
    return data, lines[0][0]


def _is_item(text: str) -> bool:
    return text.startswith("- ")


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    """The mapping or sequence whose first line is `lines[i]`, at `indent`."""
    if _is_item(lines[i][2]):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[LineMap, int]:
    result = line_map(lines[i][0])
    count = len(lines)
    while i < count:
        number, at, text = lines[i]
        if at < indent:
            break
        if at > indent or _is_item(text):
            raise _Outside
        match = _KEY.match(text)
        if match is None:
            raise _Outside
        key = match.group(1)
        if key.lower() in _NOT_STRINGS:
            raise _Outside
        # Lines are stripped of trailing spaces, so spaces after the colon come before a value.
        rest = text[match.end() :]
        i += 1
        if not rest or rest[0] == "#":
            value: Any = None
            if i < count:
                after = lines[i]
                if after[1] > indent:
                    value, i = _block(lines, i, after[1])
                elif after[1] == indent and _is_item(after[2]):
                    value, i = _sequence(lines, i, indent)
        else:
            value = _value(rest, number)
        if key in result:
            result.duplicates.append((key, number, result.key_lines[key]))
        result[key] = value
        result.key_lines[key] = number
    return result, i


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[LineList, int]:
    result = line_list(lines[i][0])
    count = len(lines)
    while i < count:
        number, at, text = lines[i]
        if at < indent:
            break
        if at > indent:
            raise _Outside
        if not _is_item(text):
            break  # the next key of the mapping this compact sequence is the value of
        content = text[2:]
        column = at + 2 + len(content) - len(content.lstrip(" "))
        content = content.lstrip(" ")
        if not content or content[0] == "#":
            raise _Outside  # the item starts on the next line
        if _KEY.match(content) is not None or _is_item(content):
            # A mapping (or sequence) that starts on the dash's line: its further lines are
            # indented to where its first one starts.
            lines[i] = (number, column, content)
            item, i = _block(lines, i, column)
        else:
            item = _value(content, number)
            i += 1
        result.append(item)
        result.item_lines.append(number)
    return result, i


def _value(text: str, line: int) -> Any:
    """A value written on one line after `key: ` or `- `, and an optional comment."""
    if text[0] == "[":
        common = _common_quoted_list(text, line)
        if common is not None:
            return common
        quoted = _QUOTED_LIST.match(text)
        if quoted is not None:
            if not _REST.fullmatch(text, quoted.end()):
                raise _Outside
            result = line_list(line)
            result.extend(_QUOTED_ITEM.findall(quoted.group(1)))
            result.item_lines.extend([line] * len(result))
            return result
        return _flow_list(text, line)
    value, end = _scalar(text, 0)
    if not _REST.fullmatch(text, end):
        raise _Outside
    return value


def _common_quoted_list(text: str, line: int) -> LineList | None:
    """`["a", "b", "c"]` spelled exactly so (no spaces but one after each comma), or None.

    The spelling nearly every list of domain patterns has, read with a few string operations
    instead of two regular expressions over the line: it saves 12 ms of explain's 200 on the
    benchmark's large config. Strings cannot hold `"`, so the first `"]` that closes an item
    (an odd count of quotes before it would make it an opening one) ends the list.
    """
    end = text.find('"]')
    if end < 0:
        return None
    body = text[1 : end + 1]
    parts = body.split('"')
    if parts[0] or len(parts) % 2 == 0 or "\\" in body:
        return None
    separators = parts[2:-1:2]
    if separators.count(", ") != len(separators) or not _REST.fullmatch(text, end + 2):
        return None
    result = line_list(line)
    result.extend(parts[1::2])
    result.item_lines.extend([line] * len(result))
    return result


def _flow_list(text: str, line: int) -> LineList:
    """`[a, "b", 3]` on one line: scalars only, no trailing comma."""
    result = line_list(line)
    position = len(text) - len(text[1:].lstrip(" "))
    if text.startswith("]", position):
        end = position + 1
    else:
        while True:
            value, position = _scalar(text, position)
            result.append(value)
            result.item_lines.append(line)
            separator = _FLOW_SEPARATOR.match(text, position)
            if separator is not None:
                position = separator.end()
                continue
            spaces = len(text) - position - len(text[position:].lstrip(" "))
            position += spaces
            if not text.startswith("]", position):
                raise _Outside
            end = position + 1
            break
    if not _REST.fullmatch(text, end):
        raise _Outside
    return result


def _scalar(text: str, position: int) -> tuple[Any, int]:
    """The scalar starting at `position` and where it ends; _Outside if it is not one the
    subset knows exactly how YAML reads."""
    first = text[position : position + 1]
    if first == '"':
        match = _DOUBLE.match(text, position)
        if match is None:
            raise _Outside
        return match.group(1), match.end()
    if first == "'":
        match = _SINGLE.match(text, position)
        if match is None:
            raise _Outside
        return match.group(1), match.end()
    match = _WORD.match(text, position)
    if match is not None:
        word = match.group()
        if word.lower() in _NOT_STRINGS:
            raise _Outside
        return word, match.end()
    match = _FLOAT.match(text, position)
    if match is not None:
        return float(match.group()), match.end()
    match = _INT.match(text, position)
    if match is not None:
        return int(match.group()), match.end()
    raise _Outside
