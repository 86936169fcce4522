"""`GET /api/tunnels` with many tunnels open and bulk transfers running (SPEC section 7.1):
every listing complete, in under 200 ms, and the tunnels never stalled by it.

`bench/admin_list.py` does the measuring (README, "Performance", gives its figures); this runs
it against the installed build. The suite runs 1,000 tunnels; the slow run (`make soak`, which
CI's `make test-long` includes) the full 5,000.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "admin_list.py"
LIMIT_MS = 200.0


def measure(tunnels: int, bulk: int, requests: int) -> dict[str, Any]:
    connectproxy = Path(sys.executable).parent / "connectproxy"
    args = [sys.executable, str(SCRIPT), "--tunnels", str(tunnels), "--bulk", str(bulk)]
    args += ["--requests", str(requests), "--connectproxy", str(connectproxy), "--json"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.stdout, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout)
    print(json.dumps(figures, indent=2))
    assert result.returncode == 0, figures
    return figures


def check(figures: dict[str, Any], tunnels: int, bulk: int) -> None:
    assert figures["tunnels_held"] == tunnels and figures["open_failures"] == 0
    # Every listing listed every tunnel: the held ones, the bulk ones and the probe.
    assert figures["rows_min"] == figures["rows_max"] == tunnels + bulk + 1
    assert figures["list_ms_p50"] < LIMIT_MS, figures
    # No tunnel ended, and the bulk transfers kept moving while the lists were built.
    assert figures["held_closed"] == 0 and figures["bulk_ended"] == 0
    assert figures["bulk_mb_per_s_while_listing"] > 0
    # The probe's echo never waited much longer than a listing took.
    assert figures["probe_rtt_ms_during_listing_max"] < figures["list_ms_max"] + LIMIT_MS


def test_listing_1000_tunnels_under_bulk_load() -> None:
    figures = measure(1000, 2, 10)
    check(figures, 1000, 2)
    assert figures["list_ms_max"] < LIMIT_MS, figures


@pytest.mark.slow
def test_listing_5000_tunnels_under_bulk_load() -> None:
    check(measure(5000, 4, 20), 5000, 4)
