"""`connectproxy explain` on the benchmark's large config (10,000 domain patterns, 100 policies,
1,000 clients and 1,000 users), run as the real command: the right answer for identities and
patterns at the start, the middle and the end of the lists.

How long it takes is measured by bench/run.py (`connectproxy-large`), not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cpbench import explain as bench_explain
from cpbench.largeconfig import BENCH_NETWORK

ORIGIN_PORT = 8443


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large.yaml"
    path.write_text(bench_explain.large_config_text(ORIGIN_PORT))
    return path


def explain(config: Path, source: str, target: str, *extra: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "connectproxy", "explain", "--config", str(config)]
    command += ["--source", source, *extra, target]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.stderr == ""
    return done.returncode, done.stdout


@pytest.mark.parametrize(
    ("source", "target", "extra", "status", "first_line"),
    [
        # The benchmark's own client: the last client, its policy's last pattern.
        (
            BENCH_NETWORK.split("/")[0],
            "bench.azure-devices.net:443",
            (),
            0,
            bench_explain.EXPECTED,
        ),
        # site-0000 (10.0.0.0/24) is bound to p000 alone.
        (
            "10.0.0.7",
            "a.p000-000.devices.example:443",
            (),
            0,
            "allow: host matches .p000-000.devices.example by policy p000 (client site-0000)",
        ),
        (
            "10.0.0.7",
            "a.p001-000.devices.example:443",
            (),
            1,
            "deny: 403 destination not allowed: host in no domains of policy p000 "
            "(client site-0000)",
        ),
        # site-0998 (10.3.248.0/24) is bound to p098, p099, p000; `*.` needs a subdomain.
        (
            "10.3.248.1",
            "x.p000-001.blob.example:8443",
            (),
            0,
            "allow: host matches *.p000-001.blob.example by policy p000 (client site-0998)",
        ),
        (
            "10.3.248.1",
            "p000-001.blob.example:443",
            (),
            1,
            "deny: 403 destination not allowed: host in no domains of policies p098, p099, "
            "p000 (client site-0998)",
        ),
        # site-0250 (10.1.0.0/24): p050, p051. An exact pattern mid-list; a port none holds.
        (
            "10.1.0.1",
            "xp050-050.update.example:443",
            (),
            0,
            "allow: host matches xp050-050.update.example by policy p050 (client site-0250)",
        ),
        (
            "10.1.0.1",
            "xp050-050.update.example:22",
            (),
            1,
            "deny: 403 port 22 not allowed by policies p050, p051 (client site-0250)",
        ),
        # A user, whatever its source; and a source no client holds.
        (
            "192.0.2.1",
            "a.p007-003.devices.example:443",
            ("--user", "user-0007"),
            0,
            "allow: host matches .p007-003.devices.example by policy p007 (client user-0007)",
        ),
        (
            "192.0.2.1",
            "a.p007-003.devices.example:443",
            (),
            1,
            "deny: 407 proxy authentication required (client -)",
        ),
    ],
)
def test_explain_answers_on_the_large_config(
    large: Path,
    source: str,
    target: str,
    extra: tuple[str, ...],
    status: int,
    first_line: str,
) -> None:
    code, output = explain(large, source, target, *extra)
    assert (code, output.splitlines()[0]) == (status, first_line)
