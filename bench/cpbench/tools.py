"""The C tools: the load generator and the origin, compiled when stale, started and read.

Both are C so that the client side costs little and the same for every proxy; this module is
their only Python interface: the command lines, the origin's "port N" line, and the load
generator's barrier protocol (it prints "@name" and waits for a newline, so the driver can sample
/proc at the exact edges of a measurement) and its one-line JSON result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .processes import child_setup
from .settings import BENCH_DIR, TARGET_HOST, BenchError, JsonDict


def bin_dir() -> Path:
    """Where the compiled tools live: $BENCH_BIN, or bench/bin/ (build output, not sources)."""
    return Path(os.environ.get("BENCH_BIN", BENCH_DIR / "bin"))


def build(bin_dir: Path) -> None:
    """Compile the C tools when a binary is missing or older than its source."""
    stale = any(
        not (bin_dir / prog).exists()
        or (bin_dir / prog).stat().st_mtime < (BENCH_DIR / f"{prog}.c").stat().st_mtime
        for prog in ("origin", "loadgen")
    )
    if stale:
        env = dict(os.environ, BENCH_BIN=str(bin_dir))
        done = subprocess.run(
            ["sh", str(BENCH_DIR / "build.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"build.sh failed:\n{done.stderr}")


def client_hello(server_name: str | None) -> bytes:
    """The ClientHello Python's `ssl` (the system's OpenSSL) sends for `server_name` (None: no
    SNI): a real client's first flight, taken from a memory BIO so no server is needed to
    record it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Tools:
    """The origin of one run, and the load generator runs against it (both on the client CPU).

    With `hello` (a file holding a ClientHello), every load generator run starts each tunnel
    with it (loadgen --hello)."""

    def __init__(self, bin_dir: Path, client_cpu: int | None, hello: Path | None = None) -> None:
        self.bin = bin_dir
        self.client_cpu = client_cpu
        self.hello = hello
        self.origin: subprocess.Popen[bytes] | None = None
        self.origin_port = 0

    def start_origin(self, rundir: Path, lifetime: float) -> None:
        """Start the origin on a free port and learn which; it exits by itself after
        `lifetime` seconds, should the driver be killed before it can stop it."""
        with (rundir / "origin.log").open("wb") as log:
            self.origin = subprocess.Popen(
                [str(self.bin / "origin"), "--port", "0", "--lifetime", str(int(lifetime))],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(self.client_cpu),
            )
        assert self.origin.stdout is not None
        ready = selectors.DefaultSelector()
        ready.register(self.origin.stdout, selectors.EVENT_READ)
        if not ready.select(timeout=10):
            raise BenchError("the origin did not report its port")
        line = self.origin.stdout.readline().decode()
        if not line.startswith("port "):
            raise BenchError(f"the origin failed to start: {line!r}")
        self.origin_port = int(line.split()[1])

    def loadgen(
        self,
        proxy_port: int,
        direct: bool,
        mode: str,
        args: list[str],
        timeout: float,
        on_barrier: Callable[[str, int], None] | None = None,
    ) -> JsonDict:
        """One load generator run through the proxy on `proxy_port` (to the origin itself when
        `direct`); `on_barrier(name, loadgen_pid)` runs at each barrier it reaches."""
        argv = [str(self.bin / "loadgen"), mode, "--proxy", f"127.0.0.1:{proxy_port}"]
        argv += ["--direct"] if direct else ["--target", f"{TARGET_HOST}:{self.origin_port}"]
        argv += args + (["--barrier"] if on_barrier else [])
        argv += ["--hello", str(self.hello)] if self.hello is not None else []
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=child_setup(self.client_cpu),
        )
        assert proc.stdin is not None and proc.stdout is not None
        out = b""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            finished = False
            while not finished and time.monotonic() < deadline:
                if not sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                finished = not chunk  # EOF: the load generator is done
                out += chunk
                while on_barrier and (m := re.search(rb"^@(\w+)\n", out, re.M)):
                    on_barrier(m.group(1).decode(), proc.pid)
                    out = out[: m.start()] + out[m.end() :]
                    with contextlib.suppress(BrokenPipeError):  # its exit status will say why
                        proc.stdin.write(b"\n")
                        proc.stdin.flush()
            if not finished:
                raise BenchError(f"loadgen {mode} did not finish within {timeout:.0f} s")
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sel.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise BenchError(f"loadgen {mode} failed ({proc.returncode}): {stderr.strip()}")
        try:
            result: JsonDict = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"loadgen {mode} printed no result: {out[-300:]!r}") from None
        return result
