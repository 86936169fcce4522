"""Password hashes and htpasswd files.

The MD5-crypt, {SHA} and bcrypt vectors below were produced once with `openssl passwd -apr1`,
`openssl passwd -1`, `openssl dgst -sha1 | base64`, `htpasswd -nbB -C 4` (Apache 2.4) and the
bcrypt package, and are kept as literals so these tests need none of those tools.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.credentials import hashformat, passwords
from connectproxy.credentials.passwords import (
    DUMMY_HASH,
    Htpasswd,
    HtpasswdError,
    check_hash_format,
    hash_password,
    md5_crypt,
    verify_password,
)

# hashlib.scrypt(b"secret", salt=b"connectproxy-tst", n=16384, r=8, p=1, dklen=32)
SCRYPT_SECRET = (
    "scrypt$n=16384,r=8,p=1$Y29ubmVjdHByb3h5LXRzdA$bW0v8sEzbkJt2f3vx8U7TJLtJA8RWeMlM897XMNpViY"
)
# hashlib.pbkdf2_hmac("sha256", "pässword".encode(), bytes(range(16)), 100_000)
PBKDF2_PASSWORD = (
    "pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw$g78tpH4qrOvbmNdJr8tb6Yc1JFIybJqRH2zZriNsUL0"
)
SALT = "AAAAAAAAAAAAAAAAAAAAAA"  # 16 zero bytes, unpadded base64
HASH = "A" * 43  # 32 zero bytes, unpadded base64


# --- our own format ---------------------------------------------------------------------------


def test_hash_round_trip() -> None:
    encoded = hash_password("correct horse battery staple")
    assert encoded.startswith("scrypt$n=16384,r=8,p=1$")
    check_hash_format(encoded)
    assert verify_password("correct horse battery staple", encoded)
    assert not verify_password("correct horse battery stapl", encoded)
    assert not verify_password("", encoded)


def test_each_hash_has_its_own_salt() -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert verify_password("same", first) and verify_password("same", second)


def test_non_ascii_password_round_trip() -> None:
    encoded = hash_password("pässwörd ✓")
    assert verify_password("pässwörd ✓", encoded)
    assert not verify_password("passwort ✓", encoded)


def test_literal_vectors_verify() -> None:
    """Pins the format: hashes written by earlier versions keep working."""
    assert verify_password("secret", SCRYPT_SECRET)
    assert not verify_password("Secret", SCRYPT_SECRET)
    assert verify_password("pässword", PBKDF2_PASSWORD)
    assert not verify_password("password", PBKDF2_PASSWORD)


def test_dummy_hash_is_well_formed_and_matches_nothing() -> None:
    check_hash_format(DUMMY_HASH)
    assert not verify_password("", DUMMY_HASH)


def test_lone_surrogate_password_is_simply_wrong() -> None:
    assert not verify_password("\ud800", SCRYPT_SECRET)


@pytest.mark.parametrize(
    "value",
    [
        SCRYPT_SECRET,
        PBKDF2_PASSWORD,
        f"scrypt$n=1024,r=8,p=1${SALT}${HASH}",
        f"scrypt$n=32768,r=8,p=1${SALT}${HASH}",
        f"scrypt$n=16384,r=8,p=4${SALT}${HASH}",
        f"scrypt$n=16384,r=8,p=1${'A' * 86}${HASH}",  # a 64-byte salt
        f"pbkdf2-sha256$i=2000000${SALT}${HASH}",
    ],
)
def test_check_hash_format_accepts(value: str) -> None:
    check_hash_format(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # plaintext and foreign formats
        ("hunter2", "not a password hash"),
        ("", "not a password hash"),
        ("$apr1$rOs6Lx3T$WxYAXXbQLSRqCktb9AMpN0", "not a password hash"),
        ("SCRYPT$n=16384,r=8,p=1$" + SALT + "$" + HASH, "not a password hash"),
        # truncated
        (SCRYPT_SECRET[:-1], "not canonical"),
        (SCRYPT_SECRET[:-3], "expected 32"),
        (SCRYPT_SECRET[: SCRYPT_SECRET.rindex("$")], "malformed scrypt"),
        ("scrypt$", "malformed scrypt"),
        (f"scrypt$n=16384,r=8,p=1$AAAA${HASH}", "salt is 3 bytes"),
        (PBKDF2_PASSWORD[:-3], "expected 32"),
        ("pbkdf2-sha256$i=100000", "malformed pbkdf2-sha256"),
        # bad parameters
        (f"scrypt$n=1099511627776,r=8,p=1${SALT}${HASH}", "outside"),
        (f"scrypt$n=99999999999999999999999,r=8,p=1${SALT}${HASH}", "malformed"),
        (f"scrypt$n=1000,r=8,p=1${SALT}${HASH}", "power of two"),
        (f"scrypt$n=512,r=8,p=1${SALT}${HASH}", "outside"),
        (f"scrypt$n=0,r=8,p=1${SALT}${HASH}", "power of two"),
        (f"scrypt$n=65536,r=8,p=1${SALT}${HASH}", "too slow or too big"),
        (f"scrypt$n=16384,r=0,p=1${SALT}${HASH}", "r=0"),
        (f"scrypt$n=16384,r=8,p=0${SALT}${HASH}", "p=0"),
        (f"scrypt$n=16384,r=64,p=1${SALT}${HASH}", "r=64"),
        (f"scrypt$n=16384,r=8,p=16${SALT}${HASH}", "too slow or too big"),
        (f"scrypt$n=016384,r=8,p=1${SALT}${HASH}", "malformed"),
        (f"scrypt$n=+16384,r=8,p=1${SALT}${HASH}", "malformed"),
        (f"scrypt$r=8,n=16384,p=1${SALT}${HASH}", "malformed"),
        (f"pbkdf2-sha256$i=1000${SALT}${HASH}", "outside"),
        (f"pbkdf2-sha256$i=1000000000${SALT}${HASH}", "outside"),
        # spelling of the base64 parts
        (f"scrypt$n=16384,r=8,p=1${SALT}==${HASH}", "malformed"),
        (f"scrypt$n=16384,r=8,p=1${SALT}${'_' * 43}", "malformed"),
        (f"scrypt$n=16384,r=8,p=1${SALT}${HASH}$extra", "malformed"),
        (SCRYPT_SECRET + "\n", "malformed"),
        (" " + SCRYPT_SECRET, "not a password hash"),
    ],
)
def test_check_hash_format_refuses(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match="connectproxy hash-password") as caught:
        check_hash_format(value)
    assert reason in str(caught.value)


def test_refusal_never_repeats_a_plaintext() -> None:
    with pytest.raises(ValueError) as caught:
        check_hash_format("my-secret-password")
    assert "my-secret-password" not in str(caught.value)


def test_verify_password_refuses_a_malformed_hash() -> None:
    with pytest.raises(ValueError):
        verify_password("hunter2", "hunter2")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_check_hash_format_only_ever_raises_value_error(value: str) -> None:
    with contextlib.suppress(ValueError):
        check_hash_format(value)


# --- MD5-crypt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "salt", "magic", "expected"),
    [
        # openssl passwd -apr1 -salt rOs6Lx3T secret
        (b"secret", b"rOs6Lx3T", b"apr1", "$apr1$rOs6Lx3T$WxYAXXbQLSRqCktb9AMpN0"),
        # openssl passwd -apr1 -salt ab 'pässwörd with spaces'
        ("pässwörd with spaces".encode(), b"ab", b"apr1", "$apr1$ab$98l9g8Ve6jmODBvO..hfL/"),
        # openssl passwd -1 -salt saltsalt secret
        (b"secret", b"saltsalt", b"1", "$1$saltsalt$9xy1btjgzLYfb7hivXtC//"),
        # openssl passwd -1 -salt x ''
        (b"", b"x", b"1", "$1$x$fwjfZtMwarkdetsjiQreU1"),
        # openssl passwd -1 -salt 12345678 a-password-that-is-longer-than-sixteen-bytes-yes
        (
            b"a-password-that-is-longer-than-sixteen-bytes-yes",
            b"12345678",
            b"1",
            "$1$12345678$g7cTWdX4EWgpt8BJ5bX9f1",
        ),
    ],
)
def test_md5_crypt_matches_openssl(
    password: bytes, salt: bytes, magic: bytes, expected: str
) -> None:
    assert md5_crypt(password, salt, magic) == expected


# --- htpasswd files -------------------------------------------------------------------------

# htpasswd -nbB -C 4 alice 'correct horse'
BCRYPT_2Y_ALICE = "$2y$04$EkT7ouWTdbDOaqd5tVwNXuwoe/WYZJ.FwnXKTyzza3NSxvDxGNbgG"
# htpasswd -nbB -C 4 dave <80 times "x">  (bcrypt only uses the first 72 bytes)
BCRYPT_2Y_DAVE = "$2y$04$yOjdLGOuoaRA/HjYbAhIzuLR7Rs.eG4xktos30rdieJC.64obNXGK"
# bcrypt.hashpw(b"tr0ub4dor&3", bcrypt.gensalt(4)) and the same with prefix=b"2a"
BCRYPT_2B = "$2b$04$oofG2jci1s3i7TLrr9x9BeVyyJeQHpnZaN4saiOpQpZ60nmpPPuVG"
BCRYPT_2A = "$2a$04$SlXkiC4Ki9stuGkUPCIlau0hvezRJprXyUZXUsBjTPrrehFLjlqT2"
# htpasswd -nbm bob secret
APR1_BOB = "$apr1$6HtIzgeP$MMTI8Jl6pbkrOCtkppH991"
# htpasswd -nbs carol secret
SHA_CAROL = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="

HTPASSWD_TEXT = f"""\
# written by htpasswd and friends
alice:{BCRYPT_2Y_ALICE}

bob:{APR1_BOB}
carol:{SHA_CAROL}
  # an indented comment
dave:{BCRYPT_2Y_DAVE}
erin:{BCRYPT_2B}
frank:{BCRYPT_2A}
grace:$1$saltsalt$9xy1btjgzLYfb7hivXtC//
heidi:{SCRYPT_SECRET}
"""


@pytest.fixture
def htpasswd() -> Htpasswd:
    return Htpasswd.parse(HTPASSWD_TEXT, "test.htpasswd")


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "correct horse"),
        ("bob", "secret"),
        ("carol", "secret"),
        ("dave", "x" * 80),
        ("dave", "x" * 72),
        ("erin", "tr0ub4dor&3"),
        ("frank", "tr0ub4dor&3"),
        ("grace", "secret"),
        ("heidi", "secret"),
    ],
)
def test_htpasswd_accepts_right_password(htpasswd: Htpasswd, user: str, password: str) -> None:
    assert htpasswd.verify(user, password) is True


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "correct horsE"),
        ("bob", "Secret"),
        ("carol", "secret "),
        ("dave", "x" * 71),
        ("erin", ""),
        ("frank", "tr0ub4dor&4"),
        ("grace", "secre"),
        ("heidi", "\udcff"),
        ("bob", "\ud800"),
    ],
)
def test_htpasswd_refuses_wrong_password(htpasswd: Htpasswd, user: str, password: str) -> None:
    assert htpasswd.verify(user, password) is False


def test_htpasswd_unknown_user_is_none(htpasswd: Htpasswd) -> None:
    assert htpasswd.verify("mallory", "secret") is None
    assert set(htpasswd.entries) == {
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "frank",
        "grace",
        "heidi",
    }


def test_htpasswd_entries_are_read_only(htpasswd: Htpasswd) -> None:
    with pytest.raises(TypeError):
        htpasswd.entries["mallory"] = SHA_CAROL  # type: ignore[index]


def test_htpasswd_crlf_and_surrounding_space() -> None:
    parsed = Htpasswd.parse(f"bob:{APR1_BOB}  \r\ncarol:{SHA_CAROL}\r\n", "crlf")
    assert parsed.verify("bob", "secret") is True
    assert parsed.verify("carol", "secret") is True


def test_htpasswd_empty_file_is_valid() -> None:
    assert dict(Htpasswd.parse("", "empty").entries) == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("no colon here", "expected 'user:hash'"),
        (f":{APR1_BOB}", "expected 'user:hash'"),
        ("eve:plaintextpassword", "unsupported password format"),
        ("eve:", "unsupported password format"),
        ("eve:abJnggxhB/yWI", "unsupported password format"),  # DES crypt
        ("eve:$5$rounds=5000$salt$hash", "unsupported password format"),
        ("eve:$apr1$6HtIzgeP$MMTI8Jl6pbkrOCtkppH99", "malformed MD5-crypt"),
        ("eve:$apr1$toolongsalt$MMTI8Jl6pbkrOCtkppH991", "malformed MD5-crypt"),
        ("eve:$1$$MMTI8Jl6pbkrOCtkppH991", "malformed MD5-crypt"),
        ("eve:" + BCRYPT_2B[:-1], "malformed bcrypt"),
        ("eve:$2y$31$" + BCRYPT_2B[7:], "bcrypt cost 31"),
        ("eve:$2y$03$" + BCRYPT_2B[7:], "bcrypt cost 3"),
        ("eve:$2x$04$" + BCRYPT_2B[7:], "unsupported password format"),
        ("eve:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ", "malformed {SHA}"),
        ("eve:{SHA}not base64!", "malformed {SHA}"),
        ("eve:" + SCRYPT_SECRET[:-2], "connectproxy hash-password"),
        ("bob:" + SHA_CAROL, "'bob' appears more than once"),
    ],
)
def test_htpasswd_bad_line_names_file_and_line(line: str, reason: str) -> None:
    text = f"# header\n\nbob:{APR1_BOB}\n{line}\ncarol:{SHA_CAROL}\n"
    with pytest.raises(HtpasswdError) as caught:
        Htpasswd.parse(text, "/etc/connectproxy/htpasswd")
    message = str(caught.value)
    assert message.startswith("/etc/connectproxy/htpasswd:4: ")
    assert reason in message
    assert caught.value.line == 4
    assert caught.value.source == "/etc/connectproxy/htpasswd"
    secret_part = line.partition(":")[2]
    if len(secret_part) > 3:
        assert secret_part not in message


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_htpasswd_parse_only_ever_raises_htpasswd_error(text: str) -> None:
    with contextlib.suppress(HtpasswdError):
        Htpasswd.parse(text, "fuzz")


def test_htpasswd_load(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(HTPASSWD_TEXT, encoding="utf-8")
    loaded = Htpasswd.load(path)
    assert loaded.verify("bob", "secret") is True
    assert loaded.source == str(path)


def test_htpasswd_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(HtpasswdError, match=r"missing: cannot read: No such file"):
        Htpasswd.load(path)


def test_htpasswd_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_bytes(b"b\xf6b:" + APR1_BOB.encode() + b"\n")
    with pytest.raises(HtpasswdError, match="not UTF-8"):
        Htpasswd.load(path)


def test_bcrypt_entries_need_bcrypt_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # makes `import bcrypt` fail
    with pytest.raises(HtpasswdError, match=r"x:2: .*install connectproxy\[bcrypt\]"):
        Htpasswd.parse(f"bob:{APR1_BOB}\nalice:{BCRYPT_2Y_ALICE}\n", "x")
    # Files without bcrypt entries do not need it.
    assert Htpasswd.parse(f"bob:{APR1_BOB}\n", "x").verify("bob", "secret") is True


def test_bcrypt_verify_without_bcrypt_says_how_to_fix(
    htpasswd: Htpasswd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    with pytest.raises(HtpasswdError, match=r"install connectproxy\[bcrypt\]"):
        htpasswd.verify("alice", "correct horse")


B64_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@settings(max_examples=500)
@given(B64_TEXT.filter(bool))
def test_the_base64_size_check_agrees_with_decoding(text: str) -> None:
    try:
        size: int | None = len(passwords._b64decode(text, "salt", 0, 1000))
    except ValueError:
        size = None
    assert hashformat.canonical_b64_size(text) == size


@settings(max_examples=1000)
@given(
    st.sampled_from(["scrypt$n=", "pbkdf2-sha256$i=", "scrypt$n=16384,r=", "x"]),
    st.sampled_from(["16384,r=8,p=1", "1024,r=1,p=1", "3,r=8,p=1", "65536,r=32,p=16", "120000"]),
    st.sampled_from(["", "0", "00", "1", "2000001"]),
    st.lists(st.one_of(B64_TEXT, st.sampled_from(SCRYPT_SECRET.split("$")[2:])), max_size=3),
    st.sampled_from(["", "$", "=", " "]),
)
def test_the_quick_format_check_accepts_only_what_parsing_accepts(
    scheme: str, params: str, more: str, parts: list[str], tail: str
) -> None:
    """`check_hash_format` decides the common (valid) case without decoding; whatever it
    accepts that way, the full parse must accept too, and it must accept every real hash."""
    value = scheme + params + more + "".join("$" + part for part in parts) + tail
    try:
        passwords._parse(value)
        parses = True
    except ValueError:
        parses = False
    if hashformat.well_formed(value):
        assert parses


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=16, max_size=64), st.binary(min_size=32, max_size=32))
def test_the_quick_format_check_accepts_well_formed_hashes(salt: bytes, digest: bytes) -> None:
    encoded = f"${passwords._b64encode(salt)}${passwords._b64encode(digest)}"
    assert hashformat.well_formed("scrypt$n=16384,r=8,p=1" + encoded)
    assert hashformat.well_formed("pbkdf2-sha256$i=600000" + encoded)
