"""How long `connectproxy explain` takes on the large config, from start to answer.

Why here: explain is what an operator (or a script checking a change) runs against the real
config, and SPEC's goal is an answer in under 100 ms on a config of 10,000 domain patterns,
including loading it. That is a wall-clock figure of a whole process, which unit tests must not
assert, so the benchmark measures it in every run that includes `connectproxy-large`: the median
of several runs, next to the same interpreter started with nothing to do (what no change to
connectproxy can take away). The answer is checked too: a fast wrong answer is no figure.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from . import largeconfig
from .settings import TARGET_HOST, BenchError, JsonDict
from .targets import template

RUNS = 21
# The benchmark's own client (127.0.0.0/8, the last of 1,000) bound to p099, whose last pattern
# covers the target: the most a walk over lists would cost.
EXPECTED = "allow: host matches .azure-devices.net by policy p099 (client bench)"


def large_config_text(origin_port: int = 8443) -> str:
    """The config `connectproxy-large` runs on; explain binds nothing, so the ports are made up."""
    fields: dict[str, str | int] = {
        "port": 3128,
        "origin_port": origin_port,
        "max_connections": 1000,
        "metrics_port": 9128,
        "access_log": "-",
        "tls": "off",
    }
    large = largeconfig.generate((443, origin_port))
    grown = largeconfig.yaml(large, largeconfig.password_hash())
    return largeconfig.splice(template("connectproxy.yaml", fields), grown)


def _interpreter(connectproxy: str) -> str | None:
    """The Python a console script starts (its #! line), for the bare start-up figure."""
    try:
        with open(connectproxy, "rb") as script:
            first = script.readline()
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words and Path(words[0]).exists() else None


def _wall_ms(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _stats(times: list[float]) -> JsonDict:
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": len(times),
    }


def measure(connectproxy: str, rundir: Path, runs: int = RUNS) -> JsonDict:
    """Median wall time of `explain` on the large config, and of a bare interpreter start."""
    config = rundir / "explain-large.yaml"
    config.write_text(large_config_text())
    command = [connectproxy, "explain", "--config", str(config), "--source", "127.0.0.1"]
    command.append(f"{TARGET_HOST}:443")
    first = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if not first.stdout.startswith(EXPECTED):
        raise BenchError(
            f"explain on the large config answered {first.stdout.strip()!r} "
            f"{first.stderr.strip()!r}, expected {EXPECTED!r}"
        )
    result: JsonDict = {"command": command, "explain": _stats(_wall_ms(command, runs))}
    python = _interpreter(connectproxy)
    if python is not None:
        result["interpreter"] = python
        result["bare_start"] = _stats(_wall_ms([python, "-c", "pass"], runs))
    return result


def line(result: JsonDict) -> str:
    """One line for the progress output and under the table."""
    explain = result["explain"]
    text = (
        f"explain on the large config: median {explain['median_ms']:.0f} ms over "
        f"{explain['runs']} runs (min {explain['min_ms']:.0f}, max {explain['max_ms']:.0f})"
    )
    bare = result.get("bare_start")
    if bare is not None:
        text += f"; the interpreter alone starts in {bare['median_ms']:.0f} ms"
    return text
