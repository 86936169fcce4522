"""The plain subset of YAML most configs are written in, read without PyYAML.

Why: `connectproxy explain` must answer in well under a second on a config of 10,000 domain
patterns, and PyYAML cannot read one that fast even with libyaml: it makes a Python object and
two position marks for each of the file's 34,000 parse events before the first value is built.
Config files are nearly always written in a small part of YAML (block mappings and sequences,
one-line flow lists, quoted strings, plain words and numbers, comments), and that part can be read
line by line with string operations and a few regular expressions at a fraction of the cost.

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


# A mapping key: a plain word of letters, digits and `_.-` that does not start with a digit.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# A word YAML 1.1 reads as a string (given it is not one of _NOT_STRINGS), or as a decimal int or
# float. Plain words with ':' or '#' or spaces, or starting with anything else, are left to PyYAML.
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_./\-]*")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
# What may follow a complete value on its line: spaces, and a comment after at least one.
_REST = re.compile(r"(?: +#.*)? *")
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
    # The only whitespace in printable ASCII is the space, so from here on strip() without an
    # argument strips spaces, on a faster path than strip(" ") takes.
    lines: list[_Line] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.lstrip()
        if not stripped or stripped[0] == "#":
            continue
        lines.append((number, len(raw) - len(stripped), stripped.rstrip()))
    if not lines:
        return None, None  # only comments and blank lines: PyYAML's empty document
    if lines[0][1] != 0:
        return None
    try:
        data, end = _block(lines, 0, 0, {})
    except _Outside:
        return None
    if end != len(lines) or not isinstance(data, LineMap):
        return None
    return data, lines[0][0]


def _is_item(text: str) -> bool:
    return text.startswith("- ")


def _split_key(text: str, keys: dict[str, str]) -> tuple[str, str]:
    """`key: value` as the key and what follows the colon and its spaces (a value, a comment or
    nothing), or ("", "") when the line does not start with a key and a colon followed by a
    space or the end of the line. A word of _NOT_STRINGS is no key: YAML reads it as another type.

    A few string operations where a regular expression's match, group and end cost three times
    as much, on every key line of the file. `keys` holds the keys of the text read so far: a
    config repeats a few keys thousands of times (`name`, `networks`...), and each is checked
    once, and read as one string.
    """
    colon = text.find(":")
    if colon < 1:
        return "", ""
    key = text[:colon]
    known = keys.get(key)
    if known is not None:
        key = known
    elif (key.isidentifier() or _KEY.fullmatch(key)) and key.lower() not in _NOT_STRINGS:
        keys[key] = key
    else:
        return "", ""
    start = colon + 1
    end = len(text)
    if start < end:
        if text[start] != " ":
            return "", ""
        # Lines are stripped of trailing spaces, so spaces after the colon come before a value.
        start += 1
        while start < end and text[start] == " ":
            start += 1
    return key, text[start:]


def _ends_line(text: str, position: int) -> bool:
    """Whether nothing but what _REST allows follows `position`: most values end their line."""
    return position == len(text) or _REST.fullmatch(text, position) is not None


def _block(lines: list[_Line], i: int, indent: int, keys: dict[str, str]) -> tuple[Any, int]:
    """The mapping or sequence whose first line is `lines[i]`, at `indent` (`keys`: the keys
    read so far, for `_split_key`)."""
    if _is_item(lines[i][2]):
        return _sequence(lines, i, indent, keys)
    return _mapping(lines, i, indent, keys)


def _mapping(lines: list[_Line], i: int, indent: int, keys: dict[str, str]) -> tuple[LineMap, int]:
    result = line_map(lines[i][0])
    count = len(lines)
    while i < count:
        number, at, text = lines[i]
        if at < indent:
            break
        if at > indent or _is_item(text):
            raise _Outside
        key, rest = _split_key(text, keys)
        if not key:
            raise _Outside
        i += 1
        if not rest or rest[0] == "#":
            value: Any = None
            if i < count:
                after = lines[i]
                if after[1] > indent:
                    value, i = _block(lines, i, after[1], keys)
                elif after[1] == indent and _is_item(after[2]):
                    value, i = _sequence(lines, i, indent, keys)
        else:
            value = _value(rest, number)
        if key in result:
            result.duplicates.append((key, number, result.key_lines[key]))
        result[key] = value
        result.key_lines[key] = number
    return result, i


def _sequence(
    lines: list[_Line], i: int, indent: int, keys: dict[str, str]
) -> tuple[LineList, int]:
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
        column = at + 2 + len(content) - len(content.lstrip())
        content = content.lstrip()
        if not content or content[0] == "#":
            raise _Outside  # the item starts on the next line
        if _split_key(content, keys)[0] or _is_item(content):
            # A mapping (or sequence) that starts on the dash's line: its further lines are
            # indented to where its first one starts.
            lines[i] = (number, column, content)
            item, i = _block(lines, i, column, keys)
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
        return _flow_list(text, line)
    value, end = _scalar(text, 0)
    if not _ends_line(text, end):
        raise _Outside
    return value


def _common_quoted_list(text: str, line: int) -> LineList | None:
    """`["a", "b", "c"]` spelled exactly so (no spaces but one after each comma), or None.

    The spelling nearly every list of domain patterns has, read with a few string operations
    instead of two regular expressions over the line. Strings cannot hold `"`, so the first `"]`
    after the opening quote ends the list, and every quote between the first and that one is in
    a `", "` between two strings (a split there makes half the parts a split at `"` makes).
    """
    end = text.find('"]', 2)
    if end < 0 or text[1] != '"':
        return None
    inner = text[2:end]
    strings = inner.split('", "')
    if inner.count('"') != 2 * len(strings) - 2 or "\\" in inner or not _ends_line(text, end + 2):
        return None
    result = line_list(line)
    result.extend(strings)
    result.item_lines.extend([line] * len(strings))
    return result


def _flow_list(text: str, line: int) -> LineList:
    """`[a, "b", 3]` on one line: scalars only, no trailing comma."""
    result = line_list(line)
    position = len(text) - len(text[1:].lstrip())
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
            spaces = len(text) - position - len(text[position:].lstrip())
            position += spaces
            if not text.startswith("]", position):
                raise _Outside
            end = position + 1
            break
    if not _ends_line(text, end):
        raise _Outside
    return result


def _scalar(text: str, position: int) -> tuple[Any, int]:
    """The scalar starting at `position` and where it ends; _Outside if it is not one the
    subset knows exactly how YAML reads."""
    first = text[position : position + 1]
    if first == '"' or first == "'":
        # A quoted string ends at the first quote like its opening one; the subset's strings
        # hold no backslash (an escape, in double quotes) and no doubled quote (in single ones).
        start = position + 1
        close = text.find(first, start)
        if close < 0:
            raise _Outside
        if first == '"':
            if text.find("\\", start, close) >= 0:
                raise _Outside
        elif text.startswith("'", close + 1):
            raise _Outside
        return text[start:close], close + 1
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
