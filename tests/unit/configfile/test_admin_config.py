"""`admin` and `reload` (SPEC section 7.1): the token file is read at load time, must hold one
word of at least 32 characters, and never appears in a message or the summary."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connectproxy.config.model import Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import parse_config
from connectproxy.configfile.summary import summarize

TOKEN = "0123456789abcdef0123456789abcdef"  # exactly 32 characters


def load(folder: Path, text: str) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", folder)


def fails(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(folder, text)
    return info.value


def test_admin_is_off_by_default_and_close_denied_false(tmp_path: Path) -> None:
    config = load(tmp_path, "{}")
    assert config.admin.token is None and not config.admin.enabled
    assert config.reload.close_denied is False
    assert "admin: off (no admin.token_file)" in summarize(config)


def test_token_is_read_relative_to_the_config_with_one_newline_stripped(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    config = load(tmp_path, "admin:\n  token_file: admin.token\nreload:\n  close_denied: true\n")
    assert config.admin.token == TOKEN
    assert config.admin.token_file == tmp_path / "admin.token"
    assert config.reload.close_denied is True
    assert TOKEN not in repr(config)
    summary = "\n".join(summarize(config))
    assert TOKEN not in summary
    assert "reload.close_denied: true" in summary


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("x" * 31 + "\n", "is 31 characters long; it must have at least 32"),
        ("", "is empty"),
        ("\n", "is empty"),
        (TOKEN + "\n" + TOKEN + "\n", "one line of one word"),
        (TOKEN[:20] + " " + TOKEN, "one line of one word"),
        (TOKEN + "\x07", "one line of one word"),
        (TOKEN + "é", "printable ASCII"),
    ],
)
def test_a_bad_token_is_a_config_error_naming_file_key_and_line(
    tmp_path: Path, content: str, says: str
) -> None:
    (tmp_path / "admin.token").write_text(content)
    error = fails(tmp_path, "log:\n  level: info\nadmin:\n  token_file: admin.token\n")
    assert error.key_path == "admin.token_file"
    assert error.line == 4
    assert says in str(error)
    assert str(tmp_path / "admin.token") in str(error)
    if content.strip():
        assert content.strip()[:20] not in str(error)  # never the secret


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    error = fails(tmp_path, "admin:\n  token_file: nowhere.token\n")
    assert error.key_path == "admin.token_file"
    assert "cannot read" in str(error)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    assert "unknown key 'token'" in str(fails(tmp_path, "admin:\n  token: abc\n"))
    error = fails(tmp_path, "reload:\n  close_denid: true\n")
    assert "did you mean 'close_denied'" in str(error)
    assert error.key_path == "reload.close_denid"
    assert "must be true or false" in str(fails(tmp_path, "reload:\n  close_denied: 1\n"))


def test_admin_without_metrics_listener_warns(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text(TOKEN)
    config = load(tmp_path, "metrics:\n  listen: null\nadmin:\n  token_file: admin.token\n")
    assert any("the admin API is served on the metrics listener" in w for w in config.warnings)
