"""What a reload does to the access log file (`AccessLog.reopen`, docs/configuration.md `log`):
reopen the same path for logrotate, follow a changed path and format, and keep writing to the
old file when the new one cannot be opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectproxy.config.model import Log
from connectproxy.observe.logs import AccessLog, AccessRecord


def record(target: str) -> AccessRecord:
    return AccessRecord(
        start=1_700_000_000.0,
        client_addr="192.0.2.7",
        client_port=40000,
        target=target,
        outcome="forbidden",
        status=403,
        error="destination not allowed",
        duration_s=0.001,
    )


def test_the_same_path_is_opened_afresh_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(Log(access_log=str(path)))
    log.write(record("a.example:443"))
    log.flush()
    path.rename(tmp_path / "access.log.1")
    log.reopen()
    log.write(record("b.example:443"))
    log.close()
    assert "b.example" in path.read_text()
    assert "b.example" not in (tmp_path / "access.log.1").read_text()


def test_a_new_path_and_format_take_over(tmp_path: Path) -> None:
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    log = AccessLog(Log(access_log=str(old)))
    log.write(record("a.example:443"))  # still buffered: it belongs to the old file
    log.reopen(Log(access_log=str(new), access_format="squid"))
    log.write(record("b.example:443"))
    log.close()
    assert old.read_text().count("\n") == 1 and old.read_text().startswith("{")
    [line] = new.read_text().splitlines()
    assert line.split()[3] == "TCP_DENIED/403" and line.split()[6] == "b.example:443"


def test_a_file_that_cannot_be_opened_leaves_the_old_one_in_use(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    log = AccessLog(Log(access_log=str(old)))
    with pytest.raises(OSError):
        log.reopen(Log(access_log=str(tmp_path / "gone" / "new.log"), access_format="squid"))
    log.write(record("b.example:443"))
    log.close()
    assert old.read_text().startswith("{") and "b.example" in old.read_text()
