"""`connectproxy run`: start, serve until a signal, reload on SIGHUP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from connectproxy import __version__, compiled
from connectproxy.config.model import Config
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.summary import summarize
from connectproxy.credentials.auth import Authenticator
from connectproxy.credentials.passwords import HtpasswdError
from connectproxy.net.upstream import Upstreams
from connectproxy.observe.logs import AccessLog, get_logger, setup_logging
from connectproxy.observe.metrics import Metrics
from connectproxy.observe.ops import OpsRequest, OpsResponse, OpsServer
from connectproxy.observe.statusmerge import snapshot_json
from connectproxy.process.adminfanout import SNAPSHOT_PATH
from connectproxy.process.sdnotify import Notifier
from connectproxy.process.status import StatusPage
from connectproxy.server.admin import AdminRoutes
from connectproxy.server.connection import Loaded
from connectproxy.server.server import Server
from connectproxy.server.tunnelapi import TunnelApi

ConfigLoader = Callable[[], Config]

CLOSED_BY_RELOAD = "closed by reload"


def build_loaded(config: Config) -> Loaded:
    """Raises ConfigError when the htpasswd file cannot be used."""
    try:
        auth = Authenticator(config.users, config.htpasswd_file)
    except (HtpasswdError, ValueError) as exc:
        raise ConfigError(config.source, "htpasswd_file", None, str(exc)) from None
    upstreams = None
    if config.upstream is not None and config.upstream.proxies:
        try:
            upstreams = Upstreams(config.upstream)
        except (OSError, ssl.SSLError) as exc:
            auth.close()
            raise ConfigError(
                config.source, "upstream.proxies", None, f"cannot load a TLS file: {exc}"
            ) from None
    return Loaded(config, auth, upstreams)


@dataclass(frozen=True)
class Role:
    """How this process serves: alone (the default), or as one of `--workers N` processes under
    a supervisor that owns the metrics listener, systemd notifications and reload accounting."""

    reuse_port: bool = False
    ops: bool = True
    notify: bool = True
    count_reloads: bool = True
    ready_fd: int | None = None  # a worker writes one byte here once it listens
    parent_pid: int | None = None  # a worker drains and exits if its supervisor disappears
    # A worker serves its admin routes here for the supervisor to gather (process/adminfanout.py)
    admin_socket: str | None = None
    tunnel_id_base: int = 0  # a worker's tunnel ids start after it, unique across workers


class App:
    """Owns the server, the ops listener and the signal handlers of one running proxy."""

    def __init__(
        self, config: Config, load: ConfigLoader, registry: CollectorRegistry, role: Role
    ) -> None:
        loaded = build_loaded(config)
        self.config = config
        self.load = load
        self.registry = registry
        self.role = role
        self.log = get_logger()
        self.stopping = asyncio.Event()
        self.ready = False
        self.metrics = Metrics(registry)
        self.access_log = AccessLog(
            config.log, report_mode=config.report_mode, tls_guard=config.tls_guard
        )
        self.server = Server(loaded, self.metrics, self.access_log, reuse_port=role.reuse_port)
        self.server.tunnels.number_from(role.tunnel_id_base)
        self.ops: OpsServer | None = None
        self.admin_socket: OpsServer | None = None
        # The admin API's routes (SPEC section 7.1), behind the running config's token; more
        # endpoints plug in with `admin_routes.add` before `start`.
        self.admin_routes = AdminRoutes(lambda: self.config.admin.token)
        TunnelApi(
            lambda: self.server.tunnels, self.access_log, asyncio.get_running_loop().time
        ).install(self.admin_routes)
        self.status_page = StatusPage(self.server, self.metrics, lambda: self.ready)
        self.status_page.install(self.admin_routes)
        if role.admin_socket is not None:
            # Only on the worker's socket, for the supervisor's status page.
            self.admin_routes.add("GET", SNAPSHOT_PATH, self._snapshot)
        self.access_log.on_refusal = self.status_page.refused
        self.notifier = Notifier() if role.notify else Notifier({})
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for warning in self.config.warnings:
            self.log.warning("config warning", detail=warning)
        self.server.start()
        metrics = self.config.metrics
        if self.role.ops and metrics.host is not None and metrics.port is not None:
            self.ops = OpsServer(
                metrics.host,
                metrics.port,
                self.registry,
                ready=lambda: self.ready,
                render=self._render_metrics,
                handler=self.admin_routes,
            )
            await self.ops.start()
        if self.role.admin_socket is not None:
            self.admin_socket = OpsServer(
                "",
                0,
                self.registry,
                ready=lambda: self.ready,
                render=self._render_metrics,
                handler=self.admin_routes,
                unix_path=self.role.admin_socket,
            )
            await self.admin_socket.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.ready = True
        self.log.info(
            "started",
            config=self.config.source,
            policy=summarize(self.config),
            version=__version__,
            compiled=compiled(),
        )
        self.notifier.ready(self._status())
        # Watchdog pings come from the loop that serves tunnels: a hung loop gets restarted.
        self._background.append(asyncio.ensure_future(self.notifier.run_watchdog()))
        if self.role.parent_pid is not None:
            self._background.append(asyncio.ensure_future(self._watch_parent()))
        if self.role.ready_fd is not None:
            os.write(self.role.ready_fd, b"R")
            os.close(self.role.ready_fd)

    def _snapshot(self, request: OpsRequest) -> OpsResponse:
        return OpsResponse(200, "application/json", snapshot_json(self.status_page.snapshot()))

    def _render_metrics(self) -> bytes:
        """What a scrape sees includes every connection that has ended, even in this iteration,
        and the readiness /readyz would answer now."""
        self.metrics.readiness(self.ready)
        self.metrics.flush()
        return generate_latest(self.registry)

    def _status(self) -> str:
        listening = ", ".join(listener.address for listener in self.config.listen)
        return f"serving on {listening}"

    async def _watch_parent(self) -> None:
        while os.getppid() == self.role.parent_pid:
            await asyncio.sleep(1.0)
        self.log.error("supervisor gone; draining")
        self.stopping.set()

    def reload(self) -> None:
        """Re-read the config; keep the old one if the new one is invalid."""
        self.notifier.reloading()
        try:
            config = self.load()
            loaded = build_loaded(config)
        except ConfigError as exc:
            if self.role.count_reloads:
                self.metrics.reloaded("failure")
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            self.status_page.reloaded(False, str(exc))
            self.notifier.ready("reload failed; running the previous config")
            return
        old = self.config
        self.config = config
        self.server.swap_config(loaded)
        self.server.update_listeners(config.listen)
        self.access_log.report_mode = config.report_mode
        self.access_log.tls_guard = config.tls_guard
        try:
            self.access_log.reopen(config.log)
        except OSError as exc:
            self.log.error(
                "cannot open the access log; still writing to the old one",
                access_log=config.log.access_log,
                error=exc.strerror or str(exc),
            )
        if old.log != config.log:
            setup_logging(config.log)
        if old.metrics != config.metrics:
            self.log.warning("metrics.listen changes take effect on restart")
        for warning in config.warnings:
            self.log.warning("config warning", detail=warning)
        if config.reload.close_denied:
            closed = self.server.tunnels.close_refused(config, CLOSED_BY_RELOAD)
            self.log.info("open tunnels decided again", closed=closed)
        if self.role.count_reloads:
            self.metrics.reloaded("success")
        self.log.info("config reloaded", config=config.source)
        self.status_page.reloaded(True)
        self.notifier.ready(self._status())

    async def run_until_stopped(self) -> None:
        await self.stopping.wait()
        self.ready = False
        self.notifier.stopping()
        grace = self.config.timeouts.shutdown_grace
        self.log.info("draining", open_tunnels=len(self.server.tunnels.active), grace_s=grace)
        self.notifier.status(f"draining {len(self.server.tunnels.active)} tunnels")
        await self.server.drain(grace)
        if self.ops is not None:
            await self.ops.close()
        if self.admin_socket is not None:
            await self.admin_socket.close()
        self.access_log.close()
        for task in self._background:
            task.cancel()
        self.notifier.close()
        self.log.info("stopped")


async def serve(
    config: Config,
    load: ConfigLoader,
    registry: CollectorRegistry = REGISTRY,
    role: Role = Role(),
) -> int:
    setup_logging(config.log)
    app = App(config, load, registry, role)
    try:
        await app.start()
    except OSError as exc:
        get_logger().error("cannot start", error=str(exc))
        app.notifier.status(f"cannot start: {exc}")
        app.server.close()
        return 1
    # Everything built so far lives as long as the process: move it out of the collector's
    # way, and collect the young generation less often, since a tunnel's objects die young
    # and almost never form cycles.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    await app.run_until_stopped()
    return 0
