"""Reading /proc: process trees, their CPU ticks and memory, and every CPU's load.

The driver measures processes it did not write (Squid forks helpers, connectproxy workers), so it
walks parent links rather than trusting a PID list, and names a process by (PID, start time) so a
recycled PID is never mistaken for one it knew.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .settings import JsonDict

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat the driver uses."""

    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) names a process uniquely
    ticks: int  # utime + stime + cutime + cstime
    zombie: bool


def read_stat(pid: int) -> ProcStat | None:
    """A process's /proc/PID/stat, None if it is gone.

    Children reaped during a measurement move their time into the parent's cutime/cstime, so
    summing all four CPU fields over a tree counts every tick exactly once."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return ProcStat(
        ppid=int(fields[1]),
        start=int(fields[19]),
        ticks=sum(int(x) for x in fields[11:15]),
        zombie=fields[0] in ("Z", "X"),
    )


def still_running(pid: int, start: int) -> bool:
    """Whether (pid, start) is alive; a zombie counts as gone and is reaped if it is ours.

    The driver is a child subreaper, so a proxy's orphaned helpers become its children; without
    the reaping they would stay zombies (this machine's PID 1 does not reap them)."""
    stat = read_stat(pid)
    if stat is None or stat.start != start:
        return False
    if stat.zombie:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def scan_processes() -> dict[int, ProcStat]:
    """Every process now, once: a tree or the noise is computed from one consistent view."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            procs[int(entry)] = stat
    return procs


def tree_in(root: int, procs: dict[int, ProcStat]) -> list[int]:
    """root and all its descendants among `procs`."""
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree, todo = [], [root] if root in procs else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_tree(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of root and all its descendants."""
    procs = scan_processes()
    return [(pid, procs[pid].start) for pid in tree_in(root, procs)]


def tree_rss_kib(root: int) -> tuple[int, int]:
    """(sum of resident set sizes in KiB, process count) over a process tree."""
    total, count = 0, 0
    for pid, _ in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
            count += 1
    return total, count


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy ticks, total ticks) from /proc/stat."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            ticks = [int(x) for x in m.group(2).split()[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            result[int(m.group(1))] = (sum(ticks) - idle, sum(ticks))
    return result


@dataclass(frozen=True)
class Snapshot:
    """What the driver records at each edge of a measured interval.

    `others` holds (parent pid, CPU ticks) of every process outside this benchmark (kernel
    threads excluded), keyed by (pid, start time): on a shared machine that is the noise."""

    t: float
    proxy_ticks: int
    client_ticks: int  # the load generator and the origin
    others: dict[tuple[int, int], tuple[int, int]]
    cpus: dict[int, tuple[int, int]]

    @staticmethod
    def take(proxy_pid: int | None, client_pids: Sequence[int]) -> Snapshot:
        """Now: the proxy's whole tree, the given client processes, everyone else's ticks."""
        procs = scan_processes()
        ours = set(tree_in(os.getpid(), procs))
        return Snapshot(
            t=time.monotonic(),
            proxy_ticks=sum(procs[p].ticks for p in tree_in(proxy_pid, procs)) if proxy_pid else 0,
            client_ticks=sum(procs[p].ticks for p in client_pids if p in procs),
            others={
                (pid, st.start): (st.ppid, st.ticks)
                for pid, st in procs.items()
                if pid not in ours and pid != 2 and st.ppid != 2
            },
            cpus=cpu_times(),
        )


def other_ticks(a: Snapshot, b: Snapshot) -> int:
    """CPU ticks that processes outside the benchmark used between two snapshots.

    Ticks include reaped children's (cutime/cstime), so the growth of every surviving process
    counts, and a process that started in between counts whole. A process that ended in between
    had its whole lifetime added to a surviving ancestor: what it had already used at `a` is
    taken back out, so only its ticks inside the interval remain."""
    total = sum(ticks - a.others.get(key, (0, 0))[1] for key, (_, ticks) in b.others.items())
    alive_a = {pid for pid, _ in a.others}
    alive_b = {pid for pid, _ in b.others}
    parent = {pid: ppid for (pid, _), (ppid, _) in a.others.items()}
    for (pid, start), (ppid, ticks) in a.others.items():
        if (pid, start) in b.others:
            continue
        ancestor = ppid
        while ancestor in alive_a and ancestor not in alive_b:
            ancestor = parent[ancestor]
        if ancestor in alive_b:
            total -= ticks
    return max(total, 0)


def interval(a: Snapshot, b: Snapshot, proxy_cpu: int | None, client_cpu: int | None) -> JsonDict:
    """CPU use between two snapshots, in percent of one core."""
    dt = max(b.t - a.t, 1e-9)

    def busy(cpu: int | None) -> float | None:
        if cpu is None:
            return None
        db = b.cpus[cpu][0] - a.cpus[cpu][0]
        dtotal = b.cpus[cpu][1] - a.cpus[cpu][1]
        return 100.0 * db / dtotal if dtotal > 0 else 0.0

    proxy_cpu_s = (b.proxy_ticks - a.proxy_ticks) / CLK_TCK
    return {
        "seconds": dt,
        "proxy_cpu_s": proxy_cpu_s,
        "proxy_cpu_pct": 100.0 * proxy_cpu_s / dt,
        "client_procs_cpu_pct": 100.0 * (b.client_ticks - a.client_ticks) / CLK_TCK / dt,
        "other_procs_cpu_pct": 100.0 * other_ticks(a, b) / CLK_TCK / dt,
        "proxy_core_busy_pct": busy(proxy_cpu),
        "client_cpu_busy_pct": busy(client_cpu),
    }
