"""The format of our own password hashes (passwords.py): the cost of new ones, the bounds a
config's are held to, and whether a text is a well-formed hash, decided without decoding or
building anything.

Apart from passwords.py so that it is compiled (setup.py): loading a config checks the format of
every user's hash, and compiled the check costs half as much (the benchmark's large config has
1,000 users: 10 million of `connectproxy explain`'s 406 million instructions). passwords.py, whose
frozen values the compiler cannot build, parses, computes, and says what is wrong.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["canonical_b64_size", "scrypt_cost_error", "well_formed"]

# scrypt cost for new hashes: n=2**14, r=8 takes 40-50 ms and 16 MiB (128 * r * n bytes) here.
SCRYPT_N: Final = 16384
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32

# Bounds accepted when parsing. The upper ones keep one verification under ~0.5 s and 32 MiB;
# the lower ones refuse hashes too weak to be worth the name.
SCRYPT_MIN_N: Final = 2**10
SCRYPT_MAX_N: Final = 2**16
SCRYPT_MAX_R: Final = 32
SCRYPT_MAX_P: Final = 16
SCRYPT_MAX_MEMORY: Final = 32 * 1024 * 1024
SCRYPT_MAX_WORK: Final = 8 * SCRYPT_N * SCRYPT_R * SCRYPT_P  # n * r * p, 8x the default cost
PBKDF2_MIN_ITERATIONS: Final = 100_000
PBKDF2_MAX_ITERATIONS: Final = 2_000_000
# The hash length is fixed so that a hash cut short is caught even when what is left happens to be
# valid base64; salts may be longer than ours, never shorter.
MIN_SALT_BYTES: Final = SALT_BYTES
MAX_SALT_BYTES: Final = 64

HOW_TO_FIX: Final = "create one with `connectproxy hash-password` (plaintext is refused)"

_NUMBER: Final = r"(0|[1-9][0-9]{0,19})"  # decimal without sign or leading zeros
_B64: Final = r"([A-Za-z0-9+/]+)"
_B64_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SCRYPT_RE: Final = re.compile(rf"scrypt\$n={_NUMBER},r={_NUMBER},p={_NUMBER}\${_B64}\${_B64}")
PBKDF2_RE: Final = re.compile(rf"pbkdf2-sha256\$i={_NUMBER}\${_B64}\${_B64}")


def canonical_b64_size(text: str) -> int | None:
    """How many bytes unpadded base64 `text` (of the alphabet the hash patterns allow) decodes
    to, or None where passwords.py's decoding refuses it: a length no encoding has, or a last
    character with bits set that an encoder leaves zero (the text would not encode back to
    itself)."""
    tail = len(text) % 4
    if tail == 1:
        return None
    # find, not index: the character is in the alphabet, and compiled, find is the cheaper call.
    if tail and _B64_ALPHABET.find(text[-1]) & (0x0F if tail == 2 else 0x03):
        return None
    return len(text) // 4 * 3 + max(tail - 1, 0)


def scrypt_cost_error(n: int, r: int, p: int) -> str | None:
    """Why scrypt parameters are refused, or None."""
    if n < 2 or n & (n - 1):
        return f"scrypt n={n} is not a power of two; {HOW_TO_FIX}"
    if not SCRYPT_MIN_N <= n <= SCRYPT_MAX_N:
        return f"scrypt n={n} is outside {SCRYPT_MIN_N}..{SCRYPT_MAX_N}; {HOW_TO_FIX}"
    if not 1 <= r <= SCRYPT_MAX_R or not 1 <= p <= SCRYPT_MAX_P:
        return f"scrypt r={r}, p={p} outside r 1..{SCRYPT_MAX_R}, p 1..{SCRYPT_MAX_P}; {HOW_TO_FIX}"
    if 128 * r * n > SCRYPT_MAX_MEMORY or n * r * p > SCRYPT_MAX_WORK:
        return f"scrypt n={n},r={r},p={p} would make every login too slow or too big; {HOW_TO_FIX}"
    return None


def well_formed(value: str) -> bool:
    """Whether passwords.py's parser accepts `value`, decided without decoding or building
    anything: True only where it accepts; False sends the value to the parser, which says what
    is wrong (tests/unit/credentials hold the two to it)."""
    # The groups are named as the strings they are: compiled, int() of a str is a direct call.
    salt: str
    digest: str
    if match := SCRYPT_RE.fullmatch(value):
        n: str = match[1]
        r: str = match[2]
        p: str = match[3]
        if scrypt_cost_error(int(n), int(r), int(p)) is not None:
            return False
        salt, digest = match[4], match[5]
    elif match := PBKDF2_RE.fullmatch(value):
        iterations: str = match[1]
        if not PBKDF2_MIN_ITERATIONS <= int(iterations) <= PBKDF2_MAX_ITERATIONS:
            return False
        salt, digest = match[2], match[3]
    else:
        return False
    salt_size = canonical_b64_size(salt)
    if salt_size is None or not MIN_SALT_BYTES <= salt_size <= MAX_SALT_BYTES:
        return False
    return canonical_b64_size(digest) == HASH_BYTES
