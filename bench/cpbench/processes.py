"""Children started pinned and tied to the driver's life; process trees stopped by PID.

A benchmark that leaves a proxy running spoils the next one (and a shared machine), so every child
gets SIGTERM from the kernel if the driver dies, the driver adopts its children's orphans, and
stopping walks the whole tree, signalling only processes whose start time still matches.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

from .procfs import process_tree, still_running

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def become_subreaper() -> None:
    """Orphans of the proxies become the driver's children, so stop_tree() can find and reap
    them (see still_running())."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)


def child_setup(cpu: int | None) -> Callable[[], None]:
    """Pin the child to one CPU, and have the kernel stop it if this driver dies."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def stop_tree(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the root, wait, then SIGTERM/SIGKILL whatever of its tree is left, by PID.

    A PID is only signalled while its start time still matches, so a recycled PID is never hit."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid, start in tree[1:] if still_running(pid, start)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid, start in tree[1:] if still_running(pid, start)]
        if not left:
            return


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP become KeyboardInterrupt, so every `finally` stops its processes."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
