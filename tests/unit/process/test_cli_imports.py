"""`explain` and `check-config` import only what deciding needs.

Why a test: the time `explain` takes on a large config (bench/run.py reports it) is mostly
interpreter start and imports, and one eager import in a shared module (the server, uvloop,
prometheus-client, structlog, doctor's network code, or PyYAML for a config the subset reader
reads) would quietly add tens of milliseconds to every call. The command runs in a fresh
interpreter, as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = (
    "asyncio",
    "connectproxy.net",
    "connectproxy.observe",
    "connectproxy.process.doctor",
    "connectproxy.server.server",
    "connectproxy.tunnel",
    "prometheus_client",
    "ssl",
    "structlog",
    "uvloop",
    "yaml",
)

CONFIG = """\
listen: ["127.0.0.1:3128"]
allow:
  ports: [443]
  domains: [".example.com"]
clients:
  - name: site
    networks: ["10.0.0.0/8"]
"""


def modules_after(*argv: str) -> tuple[str, set[str]]:
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from connectproxy.process.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main({list(argv)!r})
        print(json.dumps([out.getvalue(), sorted(sys.modules)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    output, modules = json.loads(done.stdout)
    return output, set(modules)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "connectproxy.yaml"
    path.write_text(CONFIG)
    return path


def test_explain_imports_no_server_and_no_pyyaml(config: Path) -> None:
    output, modules = modules_after(
        "explain", "--config", str(config), "--source", "10.1.2.3", "a.example.com:443"
    )
    assert output.startswith("allow: host matches .example.com by policy default (client site)")
    assert heavy(modules) == []
    # Nor the modules only an error message or another command needs, nor dataclasses, whose
    # generated methods and inspect were a sixth of explain's time (config/frozen.py).
    assert {"dataclasses", "inspect", "difflib", "hashlib"} & modules == set()


def test_check_config_imports_no_server(config: Path) -> None:
    output, modules = modules_after("check-config", "--config", str(config))
    assert "valid" in output
    assert heavy(modules) == []


def test_a_config_outside_the_subset_still_explains(tmp_path: Path) -> None:
    """An anchor sends the file to PyYAML: same answer, PyYAML imported then and only then."""
    path = tmp_path / "anchored.yaml"
    path.write_text(CONFIG.replace('[".example.com"]', '&d [".example.com"]'))
    output, modules = modules_after(
        "explain", "--config", str(path), "--source", "10.1.2.3", "a.example.com:443"
    )
    assert output.startswith("allow: host matches .example.com by policy default (client site)")
    assert {m.split(".")[0] for m in heavy(modules)} == {"yaml"}
