"""The `admin` and `reload` sections (SPEC section 7.1).

The admin token is a secret like an upstream password: read from its file here, at load time, so
`check-config` finds a short or unreadable token before a restart does, and a SIGHUP (which loads
the whole config again) picks up a new token. Messages name the file and the key, never the
token.
"""

from __future__ import annotations

from typing import Any

from connectproxy.config.model import Admin, Reload
from connectproxy.configfile.checker import Checker, Section
from connectproxy.configfile.errors import Where
from connectproxy.configfile.files import readable_file, secret_file
from connectproxy.configfile.scalars import boolean

__all__ = ["MIN_TOKEN_LENGTH", "admin", "reload"]

# 32 characters of a random token (`openssl rand -hex 16` writes exactly that) are 128 bits: too
# many to guess over the network even without a rate limit.
MIN_TOKEN_LENGTH = 32


def admin(check: Checker, value: Any, where: Where) -> Admin:
    section = Section(check, value, where, ("token_file",))
    item = section.get("token_file")
    if item is None:
        return Admin()
    path = readable_file(check, *item)
    token = secret_file(check, *item)
    name = repr(str(path))
    if not token:
        raise check.error(item[1], f"{name} is empty; write a token of at least 32 characters")
    if any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in token):
        # ASCII: an HTTP header carries it, and a browser's Basic login encodes anything else
        # in ways that differ.
        raise check.error(
            item[1],
            f"{name} must hold one line of one word: the token, in printable ASCII without "
            "spaces (one trailing newline is fine)",
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise check.error(
            item[1],
            f"the token in {name} is {len(token)} characters long; it must have at least "
            f"{MIN_TOKEN_LENGTH} (for example: openssl rand -hex 32 > {path.name})",
        )
    return Admin(token_file=path, token=token)


def reload(check: Checker, value: Any, where: Where) -> Reload:
    section = Section(check, value, where, ("close_denied",))
    return Reload(close_denied=section.get_or("close_denied", boolean, Reload().close_denied))
