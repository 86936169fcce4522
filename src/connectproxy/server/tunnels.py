"""The open tunnels: started after the 200, their live byte counts fed to the metrics, closed on
shutdown. The record step of the data path (ARCHITECTURE.md) happens here when a tunnel ends.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from connectproxy.net.busypoll import BusyPoll
from connectproxy.observe.logs import AccessRecord
from connectproxy.observe.metrics import ClientSeries, Metrics
from connectproxy.tunnel.pipes import PipePool
from connectproxy.tunnel.poller import Poller
from connectproxy.tunnel.splice import CHUNK, Tunnel, splice_available

BYTES_FLUSH_INTERVAL = 2.0  # seconds between moves of live tunnel byte counts into metrics


class _Active:
    """A running tunnel and how much of its byte counts has reached the metrics.

    A plain class, one per tunnel: compiled (setup.py), a dataclass's generated __init__ would
    run interpreted."""

    def __init__(self, tunnel: Tunnel, series: ClientSeries) -> None:
        self.tunnel = tunnel
        self.series = series
        self.flushed_up = 0
        self.flushed_down = 0


class Tunnels:
    """Every open tunnel of one server, and what they share: the epoll set, the splice pipes, the
    copy buffer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, metrics: Metrics, busy_poll: BusyPoll
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.busy_poll = busy_poll
        self.pipes = PipePool() if splice_available else None
        self.io = Poller(loop)
        self.buffer = memoryview(bytearray(CHUNK))
        self.active: set[_Active] = set()
        self._flusher = loop.call_later(BYTES_FLUSH_INTERVAL, self._flush_bytes_tick)

    def start(
        self,
        client: socket.socket,
        server: socket.socket,
        label: str,
        idle_timeout: float,
        rec: AccessRecord,
        early_up: int,
        early_down: int,
        connection_ended: Callable[[], None],
    ) -> None:
        """The tunnel runs on the poller's callbacks; no task waits for it. When it closes, its
        figures go to the metrics and the access record, and then `connection_ended` runs.

        `early_up`/`early_down`: bytes already passed on before the tunnel started (the
        client's early data, the upstream's bytes after its 200); they count as tunnel bytes."""
        tunnel = Tunnel(
            self.loop,
            client,
            server,
            idle_timeout=idle_timeout,
            pipes=self.pipes,
            buffer=self.buffer,
            io=self.io,
            busy_poll=self.busy_poll,
        )
        tunnel.upstream.count = early_up
        tunnel.downstream.count = early_down
        series = self.metrics.client(label)
        active = _Active(tunnel, series)
        self.active.add(active)
        self.metrics.tunnel_opened(series)
        started = time.perf_counter()

        def tunnel_ended() -> None:
            self.active.discard(active)
            self.metrics.tunnel_closed(series)
            self._flush_bytes(active)
            self.metrics.tunnel_lasted(time.perf_counter() - started)
            rec.bytes_client_to_server = tunnel.bytes_client_to_server
            rec.bytes_server_to_client = tunnel.bytes_server_to_client
            rec.error = tunnel.error
            connection_ended()

        tunnel.start(tunnel_ended)
        self.busy_poll.expect()  # the client's first bytes, its TLS hello, follow the 200

    def fail_all(self, reason: str) -> None:
        """Close every open tunnel now, with `reason` as its access-log error."""
        for active in list(self.active):
            active.tunnel.fail(reason)

    def _flush_bytes(self, active: _Active) -> None:
        tunnel = active.tunnel
        up, down = tunnel.bytes_client_to_server, tunnel.bytes_server_to_client
        if up > active.flushed_up or down > active.flushed_down:
            self.metrics.add_tunnel_bytes(
                active.series, up - active.flushed_up, down - active.flushed_down
            )
            active.flushed_up, active.flushed_down = up, down

    def _flush_bytes_tick(self) -> None:
        for active in self.active:
            self._flush_bytes(active)
        self._flusher = self.loop.call_later(BYTES_FLUSH_INTERVAL, self._flush_bytes_tick)

    def close(self) -> None:
        self._flusher.cancel()
        if self.pipes is not None:
            self.pipes.close()
        self.io.close()
