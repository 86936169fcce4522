"""The proxies under test: a fresh config and port per instance, start, policy check, stop.

Each scenario runs on a fresh process, so no proxy carries state (memory, connection pools, warm
caches) from one scenario into the next. Before any figure counts, both proxies must show they
enforce the same policy, or the comparison would not be like for like.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from . import largeconfig
from .journal import Journal
from .processes import child_setup, stop_tree
from .settings import (
    BENCH_DIR,
    DENIED_HOST,
    LARGE,
    TARGET_HOST,
    TLS_GUARD,
    WORKERS_NAME,
    BenchError,
    Settings,
)
from .tools import Tools
from .tracers import callgrind_command


@dataclass
class Target:
    """One proxy under test: how to configure, start and find it."""

    name: str
    command: list[str] = field(default_factory=list)
    config_text: str = ""
    access_log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None  # the proxy's stdout and stderr
    callgrind_out: Path | None = None  # prefix of callgrind's files, when run under it
    diag_log: Path | None = None  # where it explains a failure (Squid: cache.log)

    def diagnostics(self) -> str:
        """The last lines of what the proxy said, for an error message."""
        logs = [p for p in (self.log, self.diag_log) if p is not None]
        return "\n".join(f"--- {p}:\n{tail(p)}" for p in logs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Proxies:
    """Starts and stops the proxy instances of one run; `instances` numbers their files."""

    def __init__(
        self, settings: Settings, rundir: Path, tools: Tools, journal: Journal, nofile: int
    ) -> None:
        self.s = settings
        self.rundir = rundir
        self.tools = tools
        self.journal = journal
        self.nofile = nofile
        self.instances = 0

    def make_target(self, name: str) -> Target:
        """Write a fresh config for one instance; the command line is recorded for the JSON."""
        self.instances += 1
        n = self.instances
        port = free_port()
        t = Target(name=name, port=port, log=self.rundir / f"{name}-{n}.log")
        access_log = self.rundir / f"{name}-{n}-access.log"
        cache_log = self.rundir / f"{name}-{n}-cache.log"
        fields: dict[str, str | int] = {
            "port": port,
            "origin_port": self.tools.origin_port,
            "rundir": str(self.rundir),
            "max_fds": self.nofile,
            "max_connections": (self.nofile - 200) // 2,
            "access_log": str(access_log),
            "cache_log": str(cache_log),
            "tls": "verify_sni" if name == TLS_GUARD else "off",
        }
        workers = WORKERS_NAME.fullmatch(name)
        if name in ("connectproxy", LARGE, TLS_GUARD) or workers:
            t.access_log = access_log
            fields["metrics_port"] = free_port()
            t.config_text = template("connectproxy.yaml", fields)
            if name == LARGE:
                large = largeconfig.generate((443, self.tools.origin_port))
                grown = largeconfig.yaml(large, largeconfig.password_hash())
                t.config_text = largeconfig.splice(t.config_text, grown)
            conf = self.rundir / f"{name}-{n}.yaml"
            conf.write_text(t.config_text)
            t.command = [self.s.connectproxy, "run", "--config", str(conf)]
            count = workers.group(1) if workers else self.s.workers
            if count is not None:
                t.command += ["--workers", str(count)]
        elif name == "squid":
            t.access_log = access_log
            t.diag_log = cache_log
            t.config_text = template("squid.conf", fields)
            conf = self.rundir / f"squid-{n}.conf"
            conf.write_text(t.config_text)
            # --foreground keeps the production process shape (master, kid, log daemon):
            # what a systemd-started Squid runs.
            t.command = [self.s.squid, "--foreground", "-f", str(conf)]
        else:
            t.port = self.tools.origin_port
        self.journal.targets.setdefault(name, {"command": t.command, "config": t.config_text})
        return t

    def start(self, name: str, callgrind: bool = False) -> Target:
        """Start one proxy instance; with `callgrind`, under valgrind with counting switched
        off until `scenario_instructions` switches it on."""
        t = self.make_target(name)
        if name == "direct":
            return t
        assert t.log is not None
        command = t.command
        if callgrind:
            t.callgrind_out = self.rundir / f"{name}-{self.instances}.callgrind"
            command = callgrind_command(t.callgrind_out, command)
        with t.log.open("wb") as log:
            t.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(self.s.proxy_cpu),
                cwd=self.rundir,
            )
        try:
            wait_listening(t, timeout=300 if callgrind else 30)
            self.check_policy(t)
        except BaseException:
            self.stop(t)
            raise
        return t

    def stop(self, t: Target) -> None:
        """Stop the instance's whole process tree; count its access log lines (logging was on
        for every figure) and note an unclean exit."""
        if t.proc is None:
            return
        exited_early = t.proc.poll() is not None  # start() has already said why
        stop_tree(t.proc)
        if t.access_log is not None:
            self.journal.access_log_lines.setdefault(t.name, []).append(count_lines(t.access_log))
        if not exited_early and t.proc.returncode not in (0, -signal.SIGTERM):
            self.journal.warn(
                f"{t.name} exited with status {t.proc.returncode} on SIGTERM (log: {t.log})"
            )
        t.proc = None

    def check_policy(self, t: Target) -> None:
        """Both proxies must enforce the same policy, or the comparison is not like for like."""
        checks = {
            "allowed": f"{TARGET_HOST}:{self.tools.origin_port}",
            "denied_domain": f"{DENIED_HOST}:{self.tools.origin_port}",
            "denied_port": f"{TARGET_HOST}:{self.tools.origin_port % 65535 + 1}",
        }
        expected = {"allowed": 200, "denied_domain": 403, "denied_port": 403}
        result = {key: connect_status(t.port, target) for key, target in checks.items()}
        if result["allowed"] != 200:
            raise BenchError(
                f"{t.name}: CONNECT {checks['allowed']} answered {result['allowed']},"
                f" not 200\n{t.diagnostics()}"
            )
        if result != expected and t.name not in self.journal.policy_check:
            self.journal.warn(f"{t.name}: policy check {result}, expected {expected}")
        self.journal.policy_check.setdefault(t.name, result)


def free_port() -> int:
    """A port nothing listens on now; the proxy binds it a moment later (loopback: no race
    in practice, and a lost one fails loudly at start-up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(t: Target, timeout: float) -> None:
    """Until the proxy accepts connections; an early exit or a timeout says why, with its log."""
    assert t.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise BenchError(
                f"{t.name} exited with status {t.proc.returncode} at start-up\n{t.diagnostics()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", t.port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{t.name} did not listen on port {t.port} within {timeout:.0f} s\n{t.diagnostics()}"
    )


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def count_lines(path: Path) -> int:
    """Lines of an access log: proof that logging was on while the figures were taken."""
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def template(name: str, fields: dict[str, str | int]) -> str:
    """bench/templates/NAME with its $-fields filled in; a missing field is an error."""
    return Template((BENCH_DIR / "templates" / name).read_text()).substitute(fields)


def connect_status(port: int, target: str) -> int:
    """Send one CONNECT and return the status code (0 if there was no HTTP answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return 0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0
