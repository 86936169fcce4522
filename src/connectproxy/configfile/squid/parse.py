"""Reading squid.conf into a flat list of directives, the way Squid itself reads it.

The translator (`translate.py`) must see exactly the directives Squid would see, in the same
order, or it would translate a different policy from the one the operator runs. So this reader
follows Squid's own line handling rather than a generic "key value" split:

- Leading whitespace is stripped; a line whose first character is then `#` is a comment, and a
  blank line is skipped, even in the middle of a continued line (Squid does the same).
- A line ending in a backslash continues on the next line: the backslash is removed and the next
  line is appended with its leading whitespace stripped and no space inserted, as Squid does.
  A directive is reported at the line it starts on (Squid reports the last one).
- A word that starts with `#` ends the line: `acl localnet src 10.0.0.0/8  # LAN` is one value.
- `"..."` and `'...'` are quoted words; backslash escapes `\\"`, `\\\\`, `\\n`, `\\r` and `\\t`
  work inside them.
- In an `acl` line, a quoted value names a file of values, one per line (blank lines and `#`
  comments skipped, a trailing ` # comment` removed). It is expanded here, so the translator
  only ever sees values.
- `include PATH...` reads other files in place; each PATH may be a glob, and matches are read in
  sorted order. A PATH that matches nothing is an error, as in Squid.

One deliberate difference: Squid resolves a relative `include` path (and a relative ACL values
file) against its working directory, which depends on how it was started. Here it is resolved
against the folder of the file that names it, which is what the author of that file can see.
Includes nest at most 16 deep (Squid's limit) and a file including itself, directly or through
others, is reported as a loop instead of being read again.

Conditionals (`if` / `else` / `endif`) are passed through as directives; the translator refuses
them, since which branch Squid takes depends on its run-time process number.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Directive", "SquidConfError", "read_squid_conf"]

# Squid refuses to nest includes deeper than this.
MAX_INCLUDE_DEPTH = 16

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Directive:
    """One configuration line after continuations are joined and includes are expanded."""

    name: str
    args: tuple[str, ...]
    file: str
    line: int

    @property
    def where(self) -> str:
        """ "FILE:LINE", the prefix of every message about this directive."""
        return f"{self.file}:{self.line}"


class SquidConfError(Exception):
    """The file cannot be read the way Squid would read it; the message starts with FILE:LINE."""


@dataclass(frozen=True)
class _Word:
    text: str
    quoted: bool


def read_squid_conf(path: Path) -> list[Directive]:
    """Every directive of `path` and the files it includes, in the order Squid applies them."""
    directives: list[Directive] = []
    _read_file(path, (), directives)
    return directives


def _read_file(path: Path, including: tuple[Path, ...], out: list[Directive]) -> None:
    """Append the directives of `path`; `including` is the chain of files that led here."""
    text = _read_text(path)
    for line_number, line in _logical_lines(text):
        where = f"{path}:{line_number}"
        words = _split_words(line, where)
        if not words:
            continue
        name = words[0].text
        if name == "include":
            _include(path, line_number, words[1:], including, out)
            continue
        if name == "acl":
            args = _acl_args(path.parent, words[1:], where)
        else:
            args = tuple(word.text for word in words[1:])
        out.append(Directive(name=name, args=args, file=str(path), line=line_number))


def _read_text(path: Path) -> str:
    try:
        # A stray byte in a comment must not make the whole file unreadable.
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        reason = error.strerror or str(error)
        raise SquidConfError(f"{path}: cannot read the file: {reason}") from None


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each directive line, with continuations joined."""
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        # Like Squid: a backslash continues the line only if it is the very last character.
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        yield start, pending.rstrip()
        pending = ""
    if pending.strip():
        # A file ending in a backslash: Squid would drop the half line silently; reading it is
        # the more useful of the two, since the translator then reports it if it matters.
        yield start, pending.rstrip()


def _split_words(line: str, where: str) -> list[_Word]:
    """Squid's tokenizer: whitespace-separated words, quoted words, `#` word ends the line."""
    words: list[_Word] = []
    position = 0
    length = len(line)
    while position < length:
        if line[position] in " \t":
            position += 1
            continue
        if line[position] == "#":
            break
        if line[position] in "\"'":
            text, position = _quoted(line, position, where)
            words.append(_Word(text, quoted=True))
            continue
        end = position
        while end < length and line[end] not in " \t":
            end += 1
        words.append(_Word(line[position:end], quoted=False))
        position = end
    return words


def _quoted(line: str, start: int, where: str) -> tuple[str, int]:
    """The unescaped text of the quoted word at `start` and the position after it."""
    quote = line[start]
    chars: list[str] = []
    position = start + 1
    while position < len(line):
        char = line[position]
        if char == quote:
            return "".join(chars), position + 1
        if char == "\\" and position + 1 < len(line):
            following = line[position + 1]
            chars.append(_ESCAPES.get(following, "\\" + following))
            position += 2
            continue
        chars.append(char)
        position += 1
    raise SquidConfError(f"{where}: a quoted value has no closing {quote}")


def _acl_args(folder: Path, words: list[_Word], where: str) -> tuple[str, ...]:
    """`acl NAME TYPE values...` with each quoted value replaced by the values in that file."""
    args: list[str] = []
    for index, word in enumerate(words):
        if word.quoted and index >= 2:
            args.extend(_values_file(folder / word.text, where))
        else:
            args.append(word.text)
    return tuple(args)


def _values_file(path: Path, where: str) -> list[str]:
    """One value per line; Squid reads such files the same way."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        reason = error.strerror or str(error)
        raise SquidConfError(f"{where}: cannot read the ACL values file {path}: {reason}") from None
    values: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for marker in (" #", "\t#"):
            cut = line.find(marker)
            if cut != -1:
                line = line[:cut].rstrip()
        values.append(line)
    return values


def _include(
    path: Path,
    line_number: int,
    patterns: list[_Word],
    including: tuple[Path, ...],
    out: list[Directive],
) -> None:
    where = f"{path}:{line_number}"
    if not patterns:
        raise SquidConfError(f"{where}: include needs at least one file name or pattern")
    chain = (*including, path)
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise SquidConfError(
            f"{where}: includes are nested more than {MAX_INCLUDE_DEPTH} deep "
            f"(Squid's limit): {' -> '.join(str(p) for p in chain)}"
        )
    for pattern in patterns:
        target = path.parent / pattern.text
        matches = sorted(glob.glob(str(target)))
        if not matches:
            raise SquidConfError(f"{where}: include {pattern.text}: no file matches {target}")
        for match in matches:
            included = Path(match)
            if _same_file_in(included, chain):
                loop = " -> ".join(str(p) for p in (*chain, included))
                raise SquidConfError(f"{where}: include loop: {loop}")
            _read_file(included, chain, out)


def _same_file_in(path: Path, chain: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved == other.resolve() for other in chain)
