"""`connectproxy tunnels` (SPEC section 2) against a real proxy process: the table, `--json`,
`--close`, and the exit statuses for a proxy that is down, a wrong token, and a config without
an admin token."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ProxyFactory
from tests.integration.process.test_admin_api import (
    SENSOR,
    TOKEN,
    UPDATES,
    admin_config,
    ended,
    tunnel,
)
from tests.support import OriginServer, ProxyProcess, echo_exchange, finish, free_port


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectproxy", "tunnels", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_table_json_and_close(proxy: ProxyProcess, origin: OriginServer) -> None:
    config = str(proxy.config_path)
    empty = run_cli("--config", config)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.splitlines()[-1] == "0 open tunnels"

    local = tunnel(proxy.port, f"{SENSOR}:{origin.port}")
    plc = tunnel(proxy.port, f"{UPDATES}:{origin.port}", source="127.0.0.2")
    table = run_cli("--config", config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["ID", "CLIENT", "USER", "POLICY", "FROM", "TARGET"]
    assert lines[-1] == "2 open tunnels"
    local_row = ["local", "-", "default", "127.0.0.1", f"{SENSOR}:{origin.port}"]
    assert any(line.split()[1:6] == local_row for line in lines[1:-1])
    assert any(line.split()[1:4] == ["plc", "-", "updates"] for line in lines[1:-1])

    listed = run_cli("--config", config, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(row["client"] for row in rows) == ["local", "plc"]

    closed = run_cli("--config", config, "--close", "client=plc", "host=.microsoft.com")
    assert (closed.returncode, closed.stdout) == (0, "closed 1 tunnel\n"), closed.stderr
    assert ended(plc)
    echo_exchange(local, b"still open")
    none = run_cli("--config", config, "--close", "user=nobody")
    assert (none.returncode, none.stdout) == (0, "closed 0 tunnels\n")
    finish(local)


def test_bad_filters_are_usage_errors(proxy: ProxyProcess) -> None:
    for words in (["client"], ["name=x"], ["client=a", "client=b"], ["host=*bad*"]):
        result = run_cli("--config", str(proxy.config_path), "--close", *words)
        assert result.returncode == 2, words
        assert result.stderr.startswith("connectproxy: tunnels: --close: "), result.stderr
        assert "Traceback" not in result.stderr


def test_proxy_down_is_exit_1_with_one_line(tmp_path: Path, token_file: Path) -> None:
    config = admin_config(443, token_file, metrics={"listen": f"127.0.0.1:{free_port()}"})
    result = run_cli("--config", str(write_config(tmp_path, config)))
    assert result.returncode == 1
    assert result.stderr.startswith("connectproxy: tunnels: cannot reach the proxy's admin API")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_wrong_token_is_exit_1(proxy: ProxyProcess, tmp_path: Path) -> None:
    other = tmp_path / "other.token"
    other.write_text("W" * 40)
    config = copy.deepcopy(proxy.config)
    config["admin"] = {"token_file": str(other)}
    result = run_cli("--config", str(write_config(tmp_path, config)))
    assert result.returncode == 1
    assert "refused the admin token (401)" in result.stderr
    assert "W" * 40 not in result.stderr and TOKEN not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_proxy_without_the_admin_api_is_exit_1(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path, tmp_path: Path
) -> None:
    config = admin_config(origin.port, token_file)
    del config["admin"]
    proxy = make_proxy(config)
    with_token = copy.deepcopy(proxy.config)
    with_token["admin"] = {"token_file": str(token_file)}
    result = run_cli("--config", str(write_config(tmp_path, with_token)))
    assert result.returncode == 1
    assert "serves no admin API (404)" in result.stderr


def test_a_config_without_admin_token_file_is_a_clear_error(tmp_path: Path) -> None:
    config = {"metrics": {"listen": f"127.0.0.1:{free_port()}"}}
    result = run_cli("--config", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert "admin.token_file: is not set" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    broken = run_cli("--config", str(write_config(tmp_path, {"admin": {"token_file": "nope"}})))
    assert broken.returncode == 2
    assert "config error" in broken.stderr and "admin.token_file" in broken.stderr
