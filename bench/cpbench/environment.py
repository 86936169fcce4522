"""The machine as the run found it, and the TCP congestion control the run happens under.

Figures are only comparable between runs on the same kernel, CPU and sysctls, so the result file
records them; the congestion control is the one sysctl a run may set (--congestion-control).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .settings import REPO_DIR, JsonDict, Settings

# Loopback throughput depends on the congestion control more than on either proxy: on the
# build machine, under BBR every sender is paced to about 2 GB/s a flow, and under CUBIC (the
# kernel's default) the same proxies move several times more. So a run records which one it had,
# and `--congestion-control` runs under a chosen one (bench/README.md).
CC_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")
CC_AVAILABLE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


def read_sysctl(path: Path) -> str:
    """A sysctl's value, or "unknown": one the kernel or a container hides must not stop a run."""
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown"


@contextlib.contextmanager
def congestion_control(name: str | None) -> Iterator[None]:
    """The system's TCP congestion control is `name` inside the block (new sockets take it
    when they are created), and what it was again after it, however the block ends."""
    if name is None:
        yield
        return
    before = CC_SYSCTL.read_text().strip()
    CC_SYSCTL.write_text(name)
    try:
        yield
    finally:
        CC_SYSCTL.write_text(before)


def environment(s: Settings) -> JsonDict:
    """Kernel, CPU, memory, sysctls, tool versions and the commit: what a figure depends on
    besides the proxy, recorded in the result file so two runs can be told apart."""

    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    cp_python = Path(s.connectproxy).parent / "python"
    env: JsonDict = {
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "python_driver": platform.python_version(),
        "gcc": cmd(["gcc", "--version"]),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "somaxconn": read_sysctl(Path("/proc/sys/net/core/somaxconn")),
        "tcp_congestion_control": read_sysctl(CC_SYSCTL),
        "default_qdisc": read_sysctl(Path("/proc/sys/net/core/default_qdisc")),
        "tcp_tw_reuse": read_sysctl(Path("/proc/sys/net/ipv4/tcp_tw_reuse")),
        "git_commit": cmd(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"]),
        "git_dirty": bool(
            subprocess.run(
                ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        ),
    }
    if "squid" in s.proxies:
        env["squid"] = cmd([s.squid, "-v"])
    if any(n.startswith("connectproxy") for n in s.proxies) and cp_python.exists():
        env["connectproxy_python"] = cmd(
            [
                str(cp_python),
                "-c",
                "import sys, uvloop; print(sys.version.split()[0], 'uvloop', uvloop.__version__)",
            ]
        )
        # Compiled or plain Python (setup.py): the two differ in speed only, so say which ran.
        env["connectproxy"] = cmd([s.connectproxy, "--version"])
    return env
