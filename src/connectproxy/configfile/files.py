"""The files a config names: the one place validation touches the file system.

They are checked at load time, so `check-config` finds a missing certificate, an unreadable
password file or a broken htpasswd before a restart does. Keeping every open and read here leaves
the section checks pure functions of the YAML, and shows in one screen what loading a config
reads. Relative paths are anchored at the config file's folder and made absolute now, so a later
change of working directory cannot change their meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectproxy.configfile.checker import Checker
from connectproxy.configfile.errors import Where
from connectproxy.configfile.scalars import string
from connectproxy.credentials.passwords import Htpasswd, HtpasswdError

__all__ = ["htpasswd_file", "log_file", "readable_file", "secret_file"]


def readable_file(check: Checker, value: Any, where: Where) -> Path:
    """An existing, readable file, relative to the config's folder."""
    text = string(check, value, where)
    if not text:
        raise check.error(where, "must be a file path, not an empty string")
    path = check.base_dir / text
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise check.error(where, f"cannot read {str(path)!r}: {reason}") from None
    except ValueError as error:  # a NUL byte in the path
        raise check.error(where, f"not a usable path: {error}") from None
    return path


def secret_file(check: Checker, value: Any, where: Where) -> str:
    """The secret a `password_file` holds; messages name the file, never its content."""
    path = readable_file(check, value, where)
    try:
        secret = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise check.error(where, f"{str(path)!r} is not UTF-8 text") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise check.error(where, f"cannot read {str(path)!r}: {reason}") from None
    # One trailing newline is what `echo secret > file` adds; "\r\n" counts as one.
    return secret.removesuffix("\n").removesuffix("\r")


def htpasswd_file(check: Checker, value: Any, where: Where) -> Path:
    """Checked now, entries included, so check-config catches a broken file."""
    path = readable_file(check, value, where)
    try:
        loaded = Htpasswd.load(path)
    except HtpasswdError as error:
        raise check.error(where, str(error)) from None
    check.htpasswd_names = frozenset(loaded.entries)
    return path


def log_file(check: Checker, text: str, where: Where) -> str:
    """A file to append to, which need not exist yet, in a folder that must."""
    path = check.base_dir / text
    if not path.parent.is_dir():
        raise check.error(where, f"the folder {str(path.parent)!r} does not exist")
    return str(path)
