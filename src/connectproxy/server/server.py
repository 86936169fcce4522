"""The server: listeners, the accept loop, the connection count, reload and drain.

What happens to one connection is `Flow.serve` (connection.py); what is bound and how is
listening.py; the tunnels after the 200 are tunnels.py. This module only accepts, counts, and
hands each connection to a task of its own.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from dataclasses import dataclass, field

from connectproxy.config.model import Config, Listener
from connectproxy.matching.addresses import SocketAddress, peer_host
from connectproxy.net.busypoll import BusyPoll
from connectproxy.net.connector import Connector
from connectproxy.net.deadlines import Deadlines
from connectproxy.observe.logs import AccessLog, AccessRecord, get_logger
from connectproxy.observe.metrics import Metrics
from connectproxy.server.connection import Flow, Loaded, send_quietly
from connectproxy.server.limits import TOO_MANY, SourceCounts
from connectproxy.server.listening import (
    LISTEN_BACKLOG,
    NODELAY_INHERITED,
    Listening,
    accept_socket,
    connection_capacity,
    listener_tls_context,
    open_listener,
    raise_fd_limit,
)
from connectproxy.server.tunnels import Tunnels
from connectproxy.wire.responses import error_response

ACCEPT_BATCH = 64  # accepts per readiness event, so one busy listener cannot starve the loop
LOG_FLUSH_INTERVAL = 1.0  # seconds between writes of buffered access-log lines


@dataclass
class Server:
    loaded: Loaded
    metrics: Metrics
    access_log: AccessLog
    reuse_port: bool = False
    max_connections: int = 0  # after clamping to the descriptor limit
    connections: int = 0
    draining: bool = False
    listening: list[Listening] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = get_logger()
        self.deadlines = Deadlines(self.loop)
        self.busy_poll = BusyPoll(self.loop)
        self.tunnels = Tunnels(self.loop, self.metrics, self.busy_poll)
        self.sources = SourceCounts()
        self.flow = Flow(
            self.loop,
            self.metrics,
            self.access_log,
            self.deadlines,
            self.tunnels,
            self.sources,
            self._connection_closed,
        )
        self.connector = self._connector(self.loaded)
        self._log_flusher: asyncio.TimerHandle | None = None
        self.fd_limit = raise_fd_limit()  # once: the hard limit does not change while we run
        self.apply_limits(self.loaded.config)

    @property
    def config(self) -> Config:
        return self.loaded.config

    def _connector(self, loaded: Loaded) -> Connector:
        failed = self.metrics.upstream_failed
        return Connector(loaded.config, loaded.upstreams, self.deadlines, failed)

    def apply_limits(self, config: Config) -> None:
        capacity = connection_capacity(self.fd_limit)
        wanted = config.limits.max_connections
        if wanted > capacity:
            self.log.warning(
                "max_connections clamped to the open-file limit",
                configured=wanted,
                effective=capacity,
            )
        self.max_connections = min(wanted, capacity)

    # ---- listening -------------------------------------------------------------------------

    def start(self) -> None:
        for listener in self.config.listen:
            self._listen(listener)
        self._log_flusher = self.loop.call_later(LOG_FLUSH_INTERVAL, self._flush_log_tick)

    def _listen(self, listener: Listener) -> None:
        ctx = listener_tls_context(listener)
        sock, no_ipv6 = open_listener(listener, self.config.listen, self.reuse_port)
        if no_ipv6 is not None:
            self.log.warning(
                "no IPv6 on this host: listening on IPv4 addresses only",
                address=listener.address,
                listening_on=f"0.0.0.0:{listener.port}",
                error=no_ipv6.strerror or str(no_ipv6),
            )
        entry = Listening(listener, sock, ctx)
        self.listening.append(entry)
        self.loop.add_reader(sock.fileno(), self._on_acceptable, entry)
        self.log.info(
            "listening",
            address=listener.address,
            proxy_protocol=listener.proxy_protocol,
            tls=listener.tls is not None,
        )

    def stop_listening(self, entry: Listening | None = None, *, take_queued: bool = True) -> None:
        """Close `entry` (every listener by default).

        The kernel completes handshakes on our behalf: connections it has already put in the
        listen queue are connected clients, and closing the socket would reset them. Behind a
        load balancer that is a lost tunnel, since the balancer had handed it over and cannot
        retry it (SPEC section 10, scale-out), so they are accepted and served first; the listener
        closes right after, and a client arriving later is refused, which a balancer does retry.
        """
        for item in [entry] if entry else list(self.listening):
            if not item.paused:
                self.loop.remove_reader(item.sock.fileno())
            if take_queued:
                self._accept_up_to(item, LISTEN_BACKLOG)
            item.sock.close()
            self.listening.remove(item)

    def update_listeners(self, wanted: tuple[Listener, ...]) -> None:
        """Apply a reload's listener changes: removed ones stop accepting, new ones start."""
        for entry in list(self.listening):
            if entry.listener not in wanted:
                self.log.info("listener removed", address=entry.listener.address)
                self.stop_listening(entry)
        for entry in self.listening:
            try:
                entry.tls_context = listener_tls_context(entry.listener)
            except (OSError, ssl.SSLError) as exc:
                self.log.error(
                    "keeping the old TLS certificate",
                    address=entry.listener.address,
                    error=str(exc),
                )
        present = [e.listener for e in self.listening]
        for listener in wanted:
            if listener not in present:
                try:
                    self._listen(listener)
                except OSError as exc:
                    self.log.error("cannot listen", address=listener.address, error=str(exc))

    # ---- accepting ---------------------------------------------------------------------------

    def _on_acceptable(self, entry: Listening) -> None:
        """Accept one connection now and the rest of the queue once its task has taken its first
        step. Emptying the queue ends with an accept that fails with EAGAIN, and with one client
        at a time that failure came between the accept and the connection's CONNECT→200 path,
        which it delayed by its system call and exception (tests check a burst of connections is
        still taken in full)."""
        self.busy_poll.arrived()
        if self._accept_up_to(entry, 1):
            self.loop.call_soon(self._accept_rest, entry)

    def _accept_rest(self, entry: Listening) -> None:
        if not entry.paused and entry in self.listening:  # not closed or paused meanwhile
            self._accept_up_to(entry, ACCEPT_BATCH)

    def _accept_up_to(self, entry: Listening, limit: int) -> bool:
        """Accept up to `limit` connections; True if it took that many (more may be waiting)."""
        for _ in range(limit):
            try:
                sock, peer = accept_socket(entry)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(entry, exc)
                    return False
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                self.log.error("accept failed", error=str(exc))
                return False
            self._accepted(sock, peer, entry)
        return True

    def _pause_accepting(self, entry: Listening, exc: OSError) -> None:
        """Out of descriptors: stop accepting for a moment instead of spinning on a listener
        that stays readable, and try again once some connections may have closed."""
        self.log.error(
            "accept paused: out of file descriptors",
            error=exc.strerror,
            open_connections=self.connections,
        )
        entry.paused = True
        self.loop.remove_reader(entry.sock.fileno())

        def resume() -> None:
            if entry in self.listening and entry.paused:
                entry.paused = False
                self.loop.add_reader(entry.sock.fileno(), self._on_acceptable, entry)

        self.loop.call_later(0.25, resume)

    def _accepted(self, sock: socket.socket, peer: SocketAddress, entry: Listening) -> None:
        sock.setblocking(False)
        if not NODELAY_INHERITED:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.connections >= self.max_connections or self.draining:
            self._refuse_overloaded(sock, peer, entry.tls_context is None)
            return
        self.connections += 1
        self.metrics.connection_opened()
        task = self.loop.create_task(
            self.flow.serve(sock, peer, entry, self.loaded, self.connector)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse_overloaded(self, sock: socket.socket, peer: SocketAddress, answer: bool) -> None:
        """The connection limit: 503 without reading a request; on a TLS listener just close
        (no TLS, no HTTP)."""
        rec = AccessRecord(
            start=time.time(),
            client_addr=peer_host(peer[0]),
            client_port=peer[1],
            outcome="overloaded",
            status=503,
            error=TOO_MANY,
            duration_s=0.0,
        )
        if answer:
            send_quietly(sock, error_response(503, TOO_MANY))
        sock.close()
        self.metrics.count("overloaded")
        self.access_log.write(rec)

    def _connection_closed(self) -> None:
        self.connections -= 1
        self.metrics.connection_closed()

    # ---- periodic work ----------------------------------------------------------------------

    def _flush_log_tick(self) -> None:
        self.access_log.flush()
        self._log_flusher = self.loop.call_later(LOG_FLUSH_INTERVAL, self._flush_log_tick)

    # ---- reload and shutdown ----------------------------------------------------------------

    def swap_config(self, loaded: Loaded) -> None:
        """New requests use `loaded`; running connections keep the one they started with."""
        old = self.loaded
        self.loaded = loaded
        self.connector = self._connector(loaded)
        self.apply_limits(loaded.config)
        if old.auth is not loaded.auth:
            # Requests that began under the old config may still be checking a password with it.
            self.loop.call_later(old.config.timeouts.handshake + 5.0, old.auth.close)

    async def drain(self, grace: float) -> None:
        """Stop accepting, let tunnels finish for up to `grace` seconds, then close the rest."""
        self.stop_listening()
        self.draining = True
        deadline = self.loop.time() + grace
        while (self.tasks or self.tunnels.active) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.tunnels.fail_all("shutdown")
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        if self._log_flusher is not None:
            self._log_flusher.cancel()
        self.stop_listening(take_queued=False)
        self.tunnels.close()
        self.deadlines.close()
        self.loaded.auth.close()
        self.access_log.flush()
        self.metrics.flush()
