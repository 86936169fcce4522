"""Single values: strings, numbers, durations, booleans, choices and names.

Each check says what was expected and what was found, by type and never by value where the value
might be a secret (a password pasted into the wrong key). YAML 1.1 reads unquoted yes/no/on/off
as booleans, the classic surprise, so a boolean where text was expected gets a hint to quote it.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any, TypeVar

from connectproxy.configfile.checker import Checker, describe
from connectproxy.configfile.errors import Where

__all__ = [
    "basic_user_name",
    "boolean",
    "choice",
    "duration",
    "has_control",
    "integer",
    "name",
    "string",
]

_Choice = TypeVar("_Choice", bound=str)


def _quote_hint(value: Any) -> str:
    """YAML 1.1 turns unquoted yes/no/on/off into booleans, a classic surprise."""
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off as true/false: put the value in quotes)"
    return ""


def has_control(text: str) -> bool:
    # Control characters are never printable, so the common printable name skips the walk.
    return not text.isprintable() and any(unicodedata.category(char) == "Cc" for char in text)


def string(check: Checker, value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise check.error(where, f"must be a string, not {describe(value)}{_quote_hint(value)}")
    return value


def integer(check: Checker, value: Any, where: Where, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise check.error(where, f"must be a whole number, not {describe(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise check.error(where, f"must be {bounds}, not {value}")
    return value


def duration(check: Checker, value: Any, where: Where) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise check.error(where, f"must be a number of seconds, not {describe(value)}")
    if not math.isfinite(value) or value <= 0:
        raise check.error(where, f"must be a positive, finite number of seconds, not {value}")
    return float(value)


def boolean(check: Checker, value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        raise check.error(where, f"must be true or false, not {describe(value)}")
    return value


def choice(check: Checker, value: Any, where: Where, choices: tuple[_Choice, ...]) -> _Choice:
    options = " | ".join(choices)
    if not isinstance(value, str):
        raise check.error(
            where, f"must be one of {options}, not {describe(value)}{_quote_hint(value)}"
        )
    for option in choices:
        if value == option:
            return option
    import difflib  # for this message only: its import is 1% of explain's time

    close = difflib.get_close_matches(value, choices, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    raise check.error(where, f"must be one of {options}, not {value!r}{suggestion}")


def name(check: Checker, value: Any, where: Where) -> str:
    """A client, user or upstream user name: it appears in logs and metric labels."""
    text = string(check, value, where)
    if not text or text != text.strip():
        raise check.error(where, "must be a non-empty name without surrounding spaces")
    if has_control(text):
        raise check.error(where, "must not contain control characters")
    if text == "-":
        raise check.error(where, "'-' is reserved (it means 'no client' in metrics and logs)")
    return text


def basic_user_name(check: Checker, value: Any, where: Where) -> str:
    """A name sent in Basic credentials, ours (users) or to an upstream proxy."""
    text = name(check, value, where)
    if ":" in text:
        raise check.error(where, "must not contain ':' (Basic credentials are user:password)")
    return text
