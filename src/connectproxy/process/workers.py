"""`connectproxy run --workers N`: N serving processes on SO_REUSEPORT listeners, one supervisor.

One Python process uses one core. With N workers the kernel spreads accepted connections over N
processes listening on the same ports. The supervisor serves no tunnels: it starts the workers,
forwards SIGHUP/SIGTERM to every one of them, restarts one that dies, owns the metrics listener
(summing all workers' series with prometheus-client's multiprocess mode) and speaks to systemd.
Its admin API (SPEC section 7.1) gathers the workers' answers from their unix sockets
(process/adminfanout.py).
Workers are fresh interpreters (not forks of a running event loop), started with the same config
arguments; they learn their role (and their admin socket) from environment variables. The CLI sets
PROMETHEUS_MULTIPROC_DIR before prometheus-client is first imported; workers inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from connectproxy import __version__, compiled
from connectproxy.config.model import Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.observe.logs import get_logger, setup_logging
from connectproxy.observe.metrics import Metrics
from connectproxy.observe.ops import OpsServer
from connectproxy.observe.refusals import WINDOW
from connectproxy.observe.statuspage import ReloadState, StatusSnapshot
from connectproxy.process.adminfanout import ID_SPACE, AdminFanout
from connectproxy.process.app import ConfigLoader, Role
from connectproxy.process.sdnotify import Notifier
from connectproxy.server.admin import AdminRoutes

READY_FD_ENV = "CONNECTPROXY_WORKER_READY_FD"
PARENT_ENV = "CONNECTPROXY_WORKER_PARENT"
ADMIN_SOCKET_ENV = "CONNECTPROXY_WORKER_ADMIN_SOCKET"
NUMBER_ENV = "CONNECTPROXY_WORKER_NUMBER"  # 1 for the first worker started, 2 for the next...
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_TIMEOUT = 30.0


def worker_role_from_env() -> Role | None:
    """The role of a worker process started by a supervisor, or None for a standalone run."""
    fd = os.environ.pop(READY_FD_ENV, None)
    parent = os.environ.pop(PARENT_ENV, None)
    admin_socket = os.environ.pop(ADMIN_SOCKET_ENV, None)
    number = os.environ.pop(NUMBER_ENV, "0")
    if fd is None or parent is None:
        return None
    return Role(
        reuse_port=True,
        ops=False,
        notify=False,
        count_reloads=False,
        ready_fd=int(fd),
        parent_pid=int(parent),
        admin_socket=admin_socket,
        tunnel_id_base=int(number) * ID_SPACE,
    )


class Supervisor:
    def __init__(
        self,
        config: Config,
        load: ConfigLoader,
        workers: int,
        child_args: Sequence[str],
        private_dir: str,
    ) -> None:
        """`private_dir` is a directory only this user can enter; the workers' admin sockets
        are made there."""
        self.config = config
        self.load = load
        self.workers = workers
        self.child_args = list(child_args)
        self.log = get_logger()
        self.metrics = Metrics(REGISTRY)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.notifier = Notifier()
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Future[Any]] = set()
        self.stopping = asyncio.Event()
        self.ready_count = 0
        self._all_ready = asyncio.Event()
        self._ready_r, self._ready_w = os.pipe()
        self.private_dir = private_dir
        self.started_count = 0  # workers started so far, restarts included: numbers them
        self.sockets: dict[int, str] = {}  # admin socket by worker pid
        self.started = time.time()
        self.last_reload: ReloadState | None = None
        self.compiled = compiled()
        self.admin_routes = AdminRoutes(lambda: self.config.admin.token)
        AdminFanout(
            lambda: list(self.sockets.values()), lambda: self.workers, self._own_snapshot
        ).install(self.admin_routes)

    def ready(self) -> bool:
        return (
            self._all_ready.is_set()
            and not self.stopping.is_set()
            and len(self.children) == self.workers
        )

    def _render_metrics(self) -> bytes:
        """The workers' series summed, and the supervisor's readiness (what /readyz answers)."""
        self.metrics.readiness(self.ready())
        return generate_latest(self.registry)

    def _own_snapshot(self) -> StatusSnapshot:
        """The status page's figures that belong to the whole proxy; the workers add theirs."""
        upstream = self.config.upstream
        return StatusSnapshot(
            now=time.time(),
            ready=self.ready(),
            draining=self.stopping.is_set(),
            version=__version__,
            compiled=self.compiled,
            started=self.started,
            config_source=self.config.source,
            reload=self.last_reload,
            connections=0,
            tunnels=(),
            refusals=(),
            refusal_window_s=WINDOW,
            upstream_strategy=upstream.strategy if upstream is not None else None,
            upstreams=(),
        )

    async def _spawn(self) -> None:
        self.started_count += 1
        admin_socket = os.path.join(self.private_dir, f"admin-{self.started_count}.sock")
        env = dict(os.environ)
        env[READY_FD_ENV] = str(self._ready_w)
        env[PARENT_ENV] = str(os.getpid())
        env[ADMIN_SOCKET_ENV] = admin_socket
        env[NUMBER_ENV] = str(self.started_count)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "connectproxy",
            *self.child_args,
            pass_fds=(self._ready_w,),
            env=env,
        )
        self.children[proc.pid] = proc
        self.sockets[proc.pid] = admin_socket
        self._watchers.add(asyncio.ensure_future(self._watch(proc)))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        task = asyncio.current_task()
        if task is not None:
            self._watchers.discard(task)
        self.children.pop(proc.pid, None)
        admin_socket = self.sockets.pop(proc.pid, None)
        if admin_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(admin_socket)  # a killed worker leaves it behind
        mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
        if self.stopping.is_set():
            return
        self.log.error("worker exited; starting another", pid=proc.pid, exit_code=code)
        await asyncio.sleep(0.5)
        if not self.stopping.is_set():
            await self._spawn()

    def _on_ready_byte(self) -> None:
        self.ready_count += len(os.read(self._ready_r, 64))
        if self.ready_count >= self.workers:
            self._all_ready.set()

    def _signal_children(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reload(self) -> None:
        """Validate once here (and count it once), then let every worker reload itself."""
        self.notifier.reloading()
        try:
            self.config = self.load()
        except ConfigError as exc:
            self.metrics.reloaded("failure")
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            self.last_reload = ReloadState(time.time(), False, str(exc))
            self.notifier.ready("reload failed; running the previous config")
            return
        self.last_reload = ReloadState(time.time(), True, None)
        self._signal_children(signal.SIGHUP)
        self.metrics.reloaded("success")
        self.log.info("config reloaded", config=self.config.source, workers=self.workers)
        self.notifier.ready(f"{self.workers} workers serving")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._ready_r, self._on_ready_byte)
        for _ in range(self.workers):
            await self._spawn()
        try:
            await asyncio.wait_for(self._all_ready.wait(), START_TIMEOUT)
        except TimeoutError:
            self.log.error("workers did not start in time")
            await self._stop_children(grace=1.0)
            return 1
        ops = None
        metrics = self.config.metrics
        if metrics.host is not None and metrics.port is not None:
            ops = OpsServer(
                metrics.host,
                metrics.port,
                self.registry,
                ready=self.ready,
                render=self._render_metrics,
                handler=self.admin_routes,
            )
            await ops.start()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.log.info("workers started", workers=self.workers, pids=sorted(self.children))
        self.notifier.ready(f"{self.workers} workers serving")
        watchdog = asyncio.ensure_future(self.notifier.run_watchdog())

        await self.stopping.wait()
        self.notifier.stopping()
        self.log.info("draining workers", workers=len(self.children))
        await self._stop_children(grace=self.config.timeouts.shutdown_grace + 5.0)
        if ops is not None:
            await ops.close()
        watchdog.cancel()
        self.notifier.close()
        loop.remove_reader(self._ready_r)
        os.close(self._ready_r)
        os.close(self._ready_w)
        self.log.info("stopped")
        return 0

    async def _stop_children(self, grace: float) -> None:
        self._signal_children(signal.SIGTERM)
        procs = list(self.children.values())
        if not procs:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in procs], timeout=grace
        )
        if pending:
            self._signal_children(signal.SIGKILL)
            await asyncio.wait(pending, timeout=5.0)


async def supervise(
    config: Config, load: ConfigLoader, workers: int, child_args: Sequence[str]
) -> int:
    setup_logging(config.log)
    # The CLI made this directory (mode 0700) for prometheus-client's files; the workers' admin
    # sockets go there too.
    private_dir = os.environ.get(METRICS_DIR_ENV) or tempfile.mkdtemp(prefix="connectproxy-")
    try:
        return await Supervisor(config, load, workers, child_args, private_dir).run()
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
