"""valgrind's callgrind and strace: the counts per tunnel that do not drift with the machine.

CPU time on a shared machine moves from one hour to the next; instructions and system calls per
tunnel do not, so one run can judge a change to the set-up path. These helpers start the tracers
and read what they write.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .settings import BenchError


def callgrind_command(out_prefix: Path, command: list[str]) -> list[str]:
    """`command` under callgrind, counting switched off until callgrind_control switches it on
    (start-up is not what a tunnel costs); each process writes `out_prefix`.PID."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_prefix}.%p",
        *command,
    ]


def callgrind_control(*args: str) -> None:
    """Tell the running callgrind to start or stop counting, or to dump (it returns once done)."""
    done = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stderr.strip()}")


def callgrind_total(path: Path) -> int:
    """The instruction total of one callgrind output file (0 for a process that counted none).
    The `totals:` line at the end is the one to trust: in a dump requested while the program
    runs, the `summary:` line near the top says 0."""
    text = path.read_text(errors="replace")
    found = re.findall(r"^totals: (\d+)", text, re.M) or re.findall(r"^summary: (\d+)", text, re.M)
    return int(found[-1]) if found else 0


def strace_calls(table: str) -> dict[str, int]:
    """Calls per system call from `strace -c`'s table (rows end with the call's name; the
    calls column is the fourth)."""
    calls: dict[str, int] = {}
    for line in table.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[-1] != "total" and cols[3].isdigit():
            calls[cols[-1]] = calls.get(cols[-1], 0) + int(cols[3])
    return calls
