"""Password hashes: the ones `connectproxy hash-password` writes and the ones htpasswd files hold.

Everything here is pure and synchronous. Verifying a hash is deliberately slow (that is the point
of a password hash), so callers on the event loop must run `verify_password` and `Htpasswd.verify`
in a worker thread; `connectproxy.credentials.auth.Authenticator` does that.

Our own format is self-describing so that the cost parameters can be raised later without
breaking existing configs:

    scrypt$n=16384,r=8,p=1$<salt, base64 without padding>$<hash, base64 without padding>
    pbkdf2-sha256$i=<iterations>$<salt>$<hash>

Parameters are bounded when a hash is parsed: a config is input, and a hash claiming n=2**40 must
be a config error, not a proxy that hangs or runs out of memory on the first login. The format,
its bounds and the quick check a config's hashes get are in hashformat.py, which is compiled.

hashlib and hmac are imported by the functions that compute, not here: checking a config's hashes
computes nothing, and loading OpenSSL's hashes was 4 ms of `connectproxy explain`. The frozen
values are `Frozen` (config/frozen.py) rather than dataclasses, which explain does not import.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Final

from connectproxy.config.frozen import Frozen
from connectproxy.credentials.hashformat import (
    HASH_BYTES,
    HOW_TO_FIX,
    MAX_SALT_BYTES,
    MIN_SALT_BYTES,
    PBKDF2_MAX_ITERATIONS,
    PBKDF2_MIN_ITERATIONS,
    PBKDF2_RE,
    SALT_BYTES,
    SCRYPT_MAX_MEMORY,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    SCRYPT_RE,
    scrypt_cost_error,
    well_formed,
)

__all__ = [
    "DUMMY_HASH",
    "Htpasswd",
    "HtpasswdError",
    "check_hash_format",
    "hash_password",
    "md5_crypt",
    "verify_password",
]

# Cost bounds for bcrypt entries: htpasswd itself accepts 4..17.
_BCRYPT_MIN_COST: Final = 4
_BCRYPT_MAX_COST: Final = 17
# bcrypt only ever looks at the first 72 bytes; Apache truncates silently, so we do the same
# (the `bcrypt` package >= 5 raises instead, which would lock out users Apache admits).
_BCRYPT_MAX_PASSWORD_BYTES: Final = 72

# A hash of the default cost that matches no password; verifying it costs what verifying a real
# user's hash costs, which lets callers spend the same time on unknown user names.
DUMMY_HASH: Final = f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${'A' * 22}${'A' * 43}"


# --- our own format ---------------------------------------------------------------------------


class _Scrypt(Frozen):
    _fields = ("n", "r", "p", "salt", "digest")

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __init__(self, n: int, r: int, p: int, salt: bytes, digest: bytes) -> None:
        self._set(n=n, r=r, p=p, salt=salt, digest=digest)

    def compute(self, password: bytes) -> bytes:
        import hashlib

        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            # OpenSSL's default cap is 32 MiB including overhead; give it room above our bound.
            maxmem=2 * SCRYPT_MAX_MEMORY,
            dklen=len(self.digest),
        )


class _Pbkdf2(Frozen):
    _fields = ("iterations", "salt", "digest")

    iterations: int
    salt: bytes
    digest: bytes

    def __init__(self, iterations: int, salt: bytes, digest: bytes) -> None:
        self._set(iterations=iterations, salt=salt, digest=digest)

    def compute(self, password: bytes) -> bytes:
        import hashlib

        return hashlib.pbkdf2_hmac(
            "sha256", password, self.salt, self.iterations, dklen=len(self.digest)
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str, what: str, low: int, high: int) -> bytes:
    """Decode unpadded base64, insisting on the canonical spelling so one hash has one text."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64; {HOW_TO_FIX}") from None
    if _b64encode(data) != text:
        raise ValueError(f"the {what} is not canonical base64 (truncated?); {HOW_TO_FIX}")
    if not low <= len(data) <= high:
        expected = f"{low}" if low == high else f"{low} to {high}"
        raise ValueError(
            f"the {what} is {len(data)} bytes, expected {expected} (truncated?); {HOW_TO_FIX}"
        )
    return data


def _parse(value: str) -> _Scrypt | _Pbkdf2:
    """Parse one of our hashes; the error never repeats the value (it may be a plaintext)."""
    if match := SCRYPT_RE.fullmatch(value):
        n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        cost_error = scrypt_cost_error(n, r, p)
        if cost_error is not None:
            raise ValueError(cost_error)
        salt = _b64decode(match.group(4), "salt", MIN_SALT_BYTES, MAX_SALT_BYTES)
        digest = _b64decode(match.group(5), "hash", HASH_BYTES, HASH_BYTES)
        return _Scrypt(n, r, p, salt, digest)
    if match := PBKDF2_RE.fullmatch(value):
        iterations = int(match.group(1))
        if not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
            raise ValueError(
                f"pbkdf2-sha256 i={iterations} is outside "
                f"{PBKDF2_MIN_ITERATIONS}..{PBKDF2_MAX_ITERATIONS}; {HOW_TO_FIX}"
            )
        salt = _b64decode(match.group(2), "salt", MIN_SALT_BYTES, MAX_SALT_BYTES)
        digest = _b64decode(match.group(3), "hash", HASH_BYTES, HASH_BYTES)
        return _Pbkdf2(iterations, salt, digest)
    if value.startswith(("scrypt$", "pbkdf2-sha256$")):
        scheme = value.split("$", 1)[0]
        raise ValueError(
            f"malformed {scheme} hash (expected "
            + (
                "'scrypt$n=N,r=R,p=P$SALT$HASH'"
                if scheme == "scrypt"
                else "'pbkdf2-sha256$i=ITERATIONS$SALT$HASH'"
            )
            + f" with unpadded base64 SALT and HASH; truncated?); {HOW_TO_FIX}"
        )
    raise ValueError(
        "not a password hash (expected 'scrypt$…' or 'pbkdf2-sha256$…'); " + HOW_TO_FIX
    )


def _password_bytes(password: str) -> bytes:
    """UTF-8, with surrogateescape so bytes a caller decoded that way come back unchanged.

    Raises UnicodeEncodeError for other lone surrogates; callers treat that as a wrong password.
    """
    return password.encode("utf-8", "surrogateescape")


def hash_password(password: str) -> str:
    """Hash a password for `users[].password_hash` with a fresh random salt."""
    params = _Scrypt(SCRYPT_N, SCRYPT_R, SCRYPT_P, os.urandom(SALT_BYTES), bytes(HASH_BYTES))
    digest = params.compute(_password_bytes(password))
    return (
        f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
        f"${_b64encode(params.salt)}${_b64encode(digest)}"
    )


def check_hash_format(value: str) -> None:
    """Raise ValueError (with how to fix it) unless `value` is a well-formed scrypt/pbkdf2 hash.

    Config loading calls this so a plaintext, truncated or absurdly expensive hash is refused at
    startup rather than at the first login. The message never contains the value.
    """
    if not well_formed(value):
        _parse(value)


def verify_password(password: str, encoded: str) -> bool:
    """True iff `password` matches `encoded`. Slow on purpose; ValueError if `encoded` is bad."""
    import hmac

    parsed = _parse(encoded)
    try:
        secret = _password_bytes(password)
    except UnicodeEncodeError:
        parsed.compute(b"")  # spend the same time as a real attempt
        return False
    return hmac.compare_digest(parsed.compute(secret), parsed.digest)


# --- htpasswd files ---------------------------------------------------------------------------


class HtpasswdError(Exception):
    """An htpasswd file that cannot be used; the message names the file and, where known, line."""

    def __init__(self, message: str, source: str, line: int | None = None) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


_BCRYPT_PREFIXES: Final = ("$2y$", "$2a$", "$2b$")
_BCRYPT_RE: Final = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")
_MD5_CRYPT_RE: Final = re.compile(r"\$(apr1|1)\$([./0-9A-Za-z]{1,8})\$([./0-9A-Za-z]{22})")
_SHA_PREFIX: Final = "{SHA}"
_SHA1_BYTES: Final = 20
_CRYPT_ALPHABET: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INSTALL_BCRYPT: Final = "bcrypt entries need the bcrypt package: install connectproxy[bcrypt]"


def _import_bcrypt(source: str, line: int | None = None) -> ModuleType:
    """Import the optional bcrypt package only when a file actually holds bcrypt entries."""
    try:
        import bcrypt
    except ImportError:
        raise HtpasswdError(_INSTALL_BCRYPT, source, line) from None
    module: ModuleType = bcrypt
    return module


def md5_crypt(password: bytes, salt: bytes, magic: bytes) -> str:
    """The MD5-crypt scheme (FreeBSD `$1$`, Apache `$apr1$`): only the magic string differs.

    Returns the full "$magic$salt$hash" string. The scheme is weak by today's standards; it is
    here because existing Squid/Apache htpasswd files use it.
    """
    import hashlib

    salt = salt[:8]
    prefix = b"$" + magic + b"$"
    alternate = hashlib.md5(password + salt + password).digest()
    context = hashlib.md5(password + prefix + salt)
    for remaining in range(len(password), 0, -16):
        context.update(alternate[: min(16, remaining)])
    length = len(password)
    while length:
        context.update(b"\0" if length & 1 else password[:1])
        length >>= 1
    digest = context.digest()
    # 1000 rounds mixing password, salt and the previous digest in a fixed pattern.
    for round_ in range(1000):
        step = hashlib.md5()
        step.update(password if round_ & 1 else digest)
        if round_ % 3:
            step.update(salt)
        if round_ % 7:
            step.update(password)
        step.update(digest if round_ & 1 else password)
        digest = step.digest()
    # The 16 bytes are written as 22 characters of crypt's base64, in a scrambled byte order.
    encoded = []
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        encoded.append(_crypt_b64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4))
    encoded.append(_crypt_b64(digest[11], 2))
    return f"{prefix.decode('ascii')}{salt.decode('ascii')}${''.join(encoded)}"


def _crypt_b64(value: int, count: int) -> str:
    chars = []
    for _ in range(count):
        chars.append(_CRYPT_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(chars)


def _check_htpasswd_hash(stored: str, source: str, line: int) -> None:
    """Refuse, at load time, any entry we could not verify later."""
    if stored.startswith(_BCRYPT_PREFIXES):
        match = _BCRYPT_RE.fullmatch(stored)
        if match is None:
            raise HtpasswdError("malformed bcrypt hash (truncated?)", source, line)
        cost = int(match.group(1))
        if not _BCRYPT_MIN_COST <= cost <= _BCRYPT_MAX_COST:
            raise HtpasswdError(
                f"bcrypt cost {cost} is outside {_BCRYPT_MIN_COST}..{_BCRYPT_MAX_COST}",
                source,
                line,
            )
        _import_bcrypt(source, line)
    elif stored.startswith(("$apr1$", "$1$")):
        if _MD5_CRYPT_RE.fullmatch(stored) is None:
            raise HtpasswdError("malformed MD5-crypt hash (truncated?)", source, line)
    elif stored.startswith(_SHA_PREFIX):
        try:
            digest = base64.b64decode(stored[len(_SHA_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != _SHA1_BYTES:
            raise HtpasswdError("malformed {SHA} hash (truncated?)", source, line)
    elif stored.startswith(("scrypt$", "pbkdf2-sha256$")):
        try:
            check_hash_format(stored)
        except ValueError as error:
            raise HtpasswdError(str(error), source, line) from None
    else:
        raise HtpasswdError(
            "unsupported password format (plaintext or DES crypt?); use `htpasswd -B` (bcrypt), "
            "`htpasswd -m` (MD5) or `connectproxy hash-password`",
            source,
            line,
        )


def _verify_htpasswd_hash(password: str, stored: str, source: str) -> bool:
    import hashlib
    import hmac

    try:
        secret = _password_bytes(password)
    except UnicodeEncodeError:
        return False
    if stored.startswith(_BCRYPT_PREFIXES):
        bcrypt = _import_bcrypt(source)
        result: bool = bcrypt.checkpw(secret[:_BCRYPT_MAX_PASSWORD_BYTES], stored.encode("ascii"))
        return result
    if stored.startswith(("$apr1$", "$1$")):
        magic, salt, _ = stored[1:].split("$", 2)
        computed = md5_crypt(secret, salt.encode("ascii"), magic.encode("ascii"))
        return hmac.compare_digest(computed.encode("ascii"), stored.encode("ascii"))
    if stored.startswith(_SHA_PREFIX):
        computed = _SHA_PREFIX + base64.b64encode(hashlib.sha1(secret).digest()).decode("ascii")
        return hmac.compare_digest(computed.encode("ascii"), stored.encode("ascii"))
    return verify_password(password, stored)


class Htpasswd(Frozen):
    """The users of an htpasswd file, every entry checked to be verifiable when it was loaded."""

    _fields = ("entries", "source")

    entries: Mapping[str, str]
    source: str

    def __init__(self, entries: Mapping[str, str], source: str = "htpasswd") -> None:
        self._set(entries=entries, source=source)

    @classmethod
    def parse(cls, text: str, source: str) -> Htpasswd:
        """Parse "user:hash" lines; blank lines and lines starting with # are skipped.

        A duplicate user name is an error: Apache silently uses the first one, which makes the
        second a trap for whoever edits the file.
        """
        entries: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, stored = line.partition(":")
            if not colon or not user:
                raise HtpasswdError("expected 'user:hash'", source, number)
            if user in entries:
                raise HtpasswdError(f"user {user!r} appears more than once", source, number)
            _check_htpasswd_hash(stored, source, number)
            entries[user] = stored
        return cls(MappingProxyType(entries), source)

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise HtpasswdError("not UTF-8 text", str(path)) from None
        except OSError as error:
            raise HtpasswdError(f"cannot read: {error.strerror or error}", str(path)) from None
        return cls.parse(text, str(path))

    def verify(self, user: str, password: str) -> bool | None:
        """True/False for a known user, None for an unknown one (returned at once: the caller
        decides whether to spend dummy time). Slow for bcrypt and scrypt entries."""
        stored = self.entries.get(user)
        if stored is None:
            return None
        return _verify_htpasswd_hash(password, stored, self.source)
