"""The open tunnels: started after the 200, their live byte counts fed to the metrics, closed on
shutdown. The record step of the data path (ARCHITECTURE.md) happens here when a tunnel ends.

`Tunnels.active` is also the registry the admin API lists and closes from (server/admin.py):
each open tunnel under a numeric id, with its access record (who, where, which policy) and what
its admission was decided on, so a reload with `reload.close_denied` can decide it again.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from connectproxy.config.model import Config
from connectproxy.net.busypoll import BusyPoll
from connectproxy.observe.logs import AccessRecord
from connectproxy.observe.metrics import ClientSeries, Metrics
from connectproxy.policy.decide import Credentials, Source, decide
from connectproxy.tunnel.pipes import PipePool
from connectproxy.tunnel.poller import Poller
from connectproxy.tunnel.splice import CHUNK, Tunnel, splice_available
from connectproxy.wire.http import Target

BYTES_FLUSH_INTERVAL = 2.0  # seconds between moves of live tunnel byte counts into metrics


class Admission:
    """What a tunnel's admission was decided on: the target, the client as admission saw it,
    and the credentials that were accepted. The password is not kept, so a later decision
    cannot check it again; it keeps the `users` entry's hash instead, so a reload that changes
    that user's password counts as refusing the tunnel."""

    __slots__ = ("credentials", "password_hash", "source", "target")

    def __init__(
        self, target: Target, source: Source, credentials: Credentials | None, config: Config
    ) -> None:
        self.target = target
        self.source = source
        self.credentials = credentials
        found = None if credentials is None else config.users_by_name.get(credentials.user)
        self.password_hash = None if found is None else found.password_hash

    def allowed_by(self, config: Config) -> bool:
        """Whether `config` would let this tunnel open now (`reload.close_denied`)."""
        credentials = self.credentials
        if credentials is not None:
            found = config.users_by_name.get(credentials.user)
            if found is not None:
                if found.password_hash != self.password_hash:
                    return False  # its password changed
            elif config.htpasswd_file is not None:
                # Only the htpasswd file can still admit the name, but not a `users` entry's
                # password: that entry is gone.
                if self.password_hash is not None:
                    return False
            elif config.users:
                return False  # no longer a user
            else:
                # Nothing left to check credentials against: a new request's would be ignored
                # and its network alone decide.
                credentials = None
        return decide(self.target, self.source, credentials, config).allowed


class OpenTunnel:
    """A running tunnel, what the admin API shows of it, and how much of its byte counts has
    reached the metrics.

    A plain class, one per tunnel: compiled (setup.py), a dataclass's generated __init__ would
    run interpreted."""

    def __init__(
        self,
        tunnel_id: int,
        tunnel: Tunnel,
        series: ClientSeries,
        rec: AccessRecord,
        admission: Admission,
        started: float,
    ) -> None:
        self.id = tunnel_id
        self.tunnel = tunnel
        self.series = series
        self.rec = rec
        self.admission = admission
        self.started = started  # wall-clock time of the 200
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
        self.active: dict[int, OpenTunnel] = {}  # by id, in the order they opened
        self._last_id = 0
        self._flusher = loop.call_later(BYTES_FLUSH_INTERVAL, self._flush_bytes_tick)

    def number_from(self, base: int) -> None:
        """Give the next tunnels the ids after `base`. A `--workers` worker starts at its own
        base, so the ids the supervisor's admin API lists are unique over all workers."""
        self._last_id = base

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
        admission: Admission,
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
        self._last_id += 1
        tunnel_id = self._last_id
        active = OpenTunnel(tunnel_id, tunnel, series, rec, admission, time.time())
        self.active[tunnel_id] = active
        self.metrics.tunnel_opened(series)
        started = time.perf_counter()

        def tunnel_ended() -> None:
            del self.active[tunnel_id]
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
        for active in list(self.active.values()):
            active.tunnel.fail(reason)

    def close_matching(self, wanted: Callable[[OpenTunnel], bool], reason: str) -> int:
        """Close every open tunnel `wanted` picks, with `reason` as its access-log error (the
        outcome stays `established`); how many were closed."""
        chosen = [active for active in self.active.values() if wanted(active)]
        for active in chosen:
            active.tunnel.fail(reason)
        return len(chosen)

    def close_refused(self, config: Config, reason: str) -> int:
        """Decide every open tunnel again under `config` and close those it now refuses: how
        `reload.close_denied` applies a narrower policy to tunnels already open."""

        def refused(active: OpenTunnel) -> bool:
            return not active.admission.allowed_by(config)

        return self.close_matching(refused, reason)

    def _flush_bytes(self, active: OpenTunnel) -> None:
        tunnel = active.tunnel
        up, down = tunnel.bytes_client_to_server, tunnel.bytes_server_to_client
        if up > active.flushed_up or down > active.flushed_down:
            self.metrics.add_tunnel_bytes(
                active.series, up - active.flushed_up, down - active.flushed_down
            )
            active.flushed_up, active.flushed_down = up, down

    def _flush_bytes_tick(self) -> None:
        for active in self.active.values():
            self._flush_bytes(active)
        self._flusher = self.loop.call_later(BYTES_FLUSH_INTERVAL, self._flush_bytes_tick)

    def close(self) -> None:
        self._flusher.cancel()
        if self.pipes is not None:
            self.pipes.close()
        self.io.close()
