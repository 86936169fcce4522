"""The thin I/O layer: accept, read the head, ask the policy, connect, hand over to the tunnel.

Sockets are plain non-blocking sockets driven by the event loop, not asyncio streams or transports:
the tunnel needs the raw descriptors for `splice(2)`, and owning them from accept to close keeps
one code path for every connection. Each connection is one task; its whole life is the single
function `_serve`, which a reader can follow top to bottom in the order of SPEC section 4.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectproxy import proxyproto
from connectproxy.addresses import SocketAddress, endpoint_text, parse_address, peer_host
from connectproxy.auth import Authenticator
from connectproxy.busypoll import BusyPoll
from connectproxy.config import Config, IPAddress, Listener
from connectproxy.deadlines import Deadlines
from connectproxy.dial import DialError, open_tcp, resolve
from connectproxy.http import (
    ALLOW_CONNECT,
    ESTABLISHED,
    PROXY_AUTHENTICATE,
    Request,
    RequestError,
    Target,
    error_response,
    parse_basic_credentials,
    take_request,
)
from connectproxy.logs import AccessLog, AccessRecord, get_logger
from connectproxy.metrics import ClientSeries, Metrics
from connectproxy.policy import Credentials, Decision, Source, decide, usable_addresses
from connectproxy.sockio import (
    handshake,
    peer_address,
    peer_names,
    recv,
    send_all,
    wait_readable,
)
from connectproxy.tunnel import CHUNK, PipePool, Poller, Tunnel, splice_available
from connectproxy.upstream import Upstreams

ACCEPT_BATCH = 64  # accepts per readiness event, so one busy listener cannot starve the loop
BYTES_FLUSH_INTERVAL = 2.0  # seconds between moves of live tunnel byte counts into metrics
FDS_PER_CONNECTION = 2
FDS_RESERVED = 64  # listeners, logs, pipes in flight, the resolver's threads
# Linux copies TCP_NODELAY from a listener to the sockets it accepts (tests/test_listener.py).
NODELAY_INHERITED = sys.platform.startswith("linux")


class _Closed(Exception):
    """The connection ends without an HTTP answer (client gone, bad PROXY header)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    """A config and what is built from it (authenticator, upstreams with their TLS contexts),
    swapped together on reload."""

    config: Config
    auth: Authenticator
    upstreams: Upstreams | None = None


class _Active:
    """A running tunnel and how much of its byte counts has reached the metrics.

    A plain class, one per tunnel: compiled (setup.py), a dataclass's generated __init__ would
    run interpreted."""

    def __init__(self, tunnel: Tunnel, series: ClientSeries) -> None:
        self.tunnel = tunnel
        self.series = series
        self.flushed_up = 0
        self.flushed_down = 0


@dataclass(eq=False)
class _Listening:
    listener: Listener
    sock: socket.socket
    tls_context: ssl.SSLContext | None = None
    paused: bool = False


def listener_tls_context(listener: Listener) -> ssl.SSLContext | None:
    """Built at start and on every reload, so a renewed certificate is picked up by SIGHUP."""
    tls = listener.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def raise_fd_limit() -> int:
    """Raise the descriptor soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_capacity(fd_limit: int) -> int:
    return max(1, (fd_limit - FDS_RESERVED) // FDS_PER_CONNECTION)


def bind_listener(
    listener: Listener,
    all_listeners: tuple[Listener, ...],
    reuse_port: bool,
    new_socket: Callable[[int, int], socket.socket] = socket.socket,
) -> socket.socket:
    """A listening socket for `listener`. `new_socket` makes the socket: a test passes one that
    fails for IPv6 as a host without IPv6 does (see `open_listener`)."""
    # Plain tuples, as in dial.lookup: compiled, the declared enum types would be checked.
    infos: list[tuple[Any, ...]] = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family: int = infos[0][0]
    sockaddr: SocketAddress = infos[0][4]
    sock = new_socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:P" is dual-stack unless an IPv4 listener wants the same port.
            sock.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_V6ONLY,
                int(_ipv4_same_port(listener, all_listeners)),
            )
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt here
        # instead of one per connection (elsewhere `_accepted` sets it on each).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _ipv4_same_port(listener: Listener, all_listeners: tuple[Listener, ...]) -> bool:
    return any(o.port == listener.port and ":" not in o.host for o in all_listeners)


# What creating or binding an IPv6 socket fails with on a host without IPv6: a kernel without it
# (built so, or booted with ipv6.disable=1) has no such address family; with IPv6 switched off
# on every interface, an IPv6 address cannot be assigned.
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL)


def open_listener(
    listener: Listener,
    all_listeners: tuple[Listener, ...],
    reuse_port: bool,
    new_socket: Callable[[int, int], socket.socket] = socket.socket,
) -> tuple[socket.socket, OSError | None]:
    """`bind_listener`, except that a dual-stack "[::]:P" listener (every IPv4 and IPv6 address,
    the embedded default) on a host without IPv6 listens on "0.0.0.0:P" instead, as Squid does.
    The second item is then the IPv6 failure, for the one warning the caller logs: the socket
    stays open across reloads, so the fallback happens once per process."""
    try:
        return bind_listener(listener, all_listeners, reuse_port, new_socket), None
    except OSError as exc:
        dual_stack = listener.host == "::" and not _ipv4_same_port(listener, all_listeners)
        if not dual_stack or exc.errno not in NO_IPV6:
            raise
        ipv4 = Listener("0.0.0.0", listener.port, listener.proxy_protocol, listener.tls)
        return bind_listener(ipv4, all_listeners, reuse_port, new_socket), exc


@dataclass
class Server:
    policy: Policy
    metrics: Metrics
    access_log: AccessLog
    reuse_port: bool = False
    max_connections: int = 0  # after clamping to the descriptor limit
    connections: int = 0
    draining: bool = False
    listening: list[_Listening] = field(default_factory=list)
    # Keyed by packed address: bytes hash in C, once; an ipaddress object hashes in Python.
    per_source: dict[bytes, int] = field(default_factory=dict)
    active: set[_Active] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = get_logger()
        self.pipes = PipePool() if splice_available else None
        self.io = Poller(self.loop)
        self.deadlines = Deadlines(self.loop)
        self.buffer = memoryview(bytearray(CHUNK))
        self._flusher: asyncio.TimerHandle | None = None
        self._log_flusher: asyncio.TimerHandle | None = None
        self.busy_poll = BusyPoll(self.loop)
        self.apply_limits(self.policy.config)

    @property
    def config(self) -> Config:
        return self.policy.config

    def apply_limits(self, config: Config) -> None:
        capacity = connection_capacity(raise_fd_limit())
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
        self._flusher = self.loop.call_later(BYTES_FLUSH_INTERVAL, self._flush_bytes_tick)
        self._log_flusher = self.loop.call_later(1.0, self._flush_log_tick)

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
        entry = _Listening(listener, sock, ctx)
        self.listening.append(entry)
        self.loop.add_reader(sock.fileno(), self._on_acceptable, entry)
        self.log.info(
            "listening",
            address=listener.address,
            proxy_protocol=listener.proxy_protocol,
            tls=listener.tls is not None,
        )

    def stop_listening(self, entry: _Listening | None = None) -> None:
        for item in [entry] if entry else list(self.listening):
            if not item.paused:
                self.loop.remove_reader(item.sock.fileno())
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

    def _on_acceptable(self, entry: _Listening) -> None:
        """Accept one connection now and the rest of the queue once its task has taken its first
        step. Emptying the queue ends with an accept that fails with EAGAIN, and with one client
        at a time that failure came between the accept and the connection's CONNECT→200 path,
        which it delayed by its system call and exception (test_listener.py checks a burst of
        connections is still taken in full)."""
        self.busy_poll.arrived()
        if self._accept_up_to(entry, 1):
            self.loop.call_soon(self._accept_rest, entry)

    def _accept_rest(self, entry: _Listening) -> None:
        if not entry.paused and entry in self.listening:  # not closed or paused meanwhile
            self._accept_up_to(entry, ACCEPT_BATCH)

    def _accept_up_to(self, entry: _Listening, limit: int) -> bool:
        """Accept up to `limit` connections; True if it took that many (more may be waiting)."""
        for _ in range(limit):
            try:
                sock, peer = entry.sock.accept()
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

    def _pause_accepting(self, entry: _Listening, exc: OSError) -> None:
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

    def _accepted(self, sock: socket.socket, peer: SocketAddress, entry: _Listening) -> None:
        sock.setblocking(False)
        if not NODELAY_INHERITED:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.connections >= self.max_connections or self.draining:
            self._refuse_overloaded(sock, peer, "too many connections", entry.tls_context is None)
            return
        self.connections += 1
        self.metrics.connection_opened()
        task = self.loop.create_task(self._serve(sock, peer, entry))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse_overloaded(
        self, sock: socket.socket, peer: SocketAddress, reason: str, answer: bool
    ) -> None:
        """503 without reading a request; on a TLS listener just close (no TLS, no HTTP)."""
        rec = AccessRecord(
            start=time.time(),
            client_addr=peer_host(peer[0]),
            client_port=peer[1],
            outcome="overloaded",
            status=503,
            error=reason,
            duration_s=0.0,
        )
        if answer:
            _send_quietly(sock, error_response(503, reason))
        sock.close()
        self._finish_record(rec)

    # ---- one connection ---------------------------------------------------------------------

    def _task(self) -> asyncio.Task[Any]:
        """The running connection's task; given the loop, asyncio does not look it up."""
        task = asyncio.current_task(self.loop)
        assert task is not None
        return task

    async def _serve(self, sock: socket.socket, peer: SocketAddress, entry: _Listening) -> None:
        policy = self.policy
        config = policy.config
        listener = entry.listener
        began = time.perf_counter()  # the loop's clock ticks in whole milliseconds
        rec = AccessRecord(
            start=time.time(),
            client_addr=peer_host(peer[0]),
            client_port=peer[1],
            listener=listener.address,
        )
        source_addr = parse_address(peer[0])
        source_port = peer[1]
        tls_names: tuple[str, ...] = ()
        counted_source: bytes | None = None
        server_sock: socket.socket | None = None
        stage = "proxy header" if listener.proxy_protocol != "off" else "request"
        handed_over = False
        task = self._task()  # for the deadlines; looked up once (interpreted in Python 3.11)

        def ended() -> None:
            """The connection's last step, once its sockets are closed, by whichever path."""
            if counted_source is not None:
                left = self.per_source[counted_source] - 1
                if left:
                    self.per_source[counted_source] = left
                else:
                    del self.per_source[counted_source]
            self.connections -= 1
            self.metrics.connection_closed()
            rec.duration_s = round(time.perf_counter() - began, 6)
            self.access_log.write(rec)

        try:
            try:
                with self.deadlines.limit(task, config.timeouts.handshake):
                    if listener.proxy_protocol != "off":
                        source_addr, source_port = await self._read_proxy_header(
                            sock, listener, source_addr, source_port
                        )
                        rec.client_addr, rec.client_port = str(source_addr), source_port
                    source_key = source_addr.packed
                    from_source = self.per_source.get(source_key, 0)
                    if from_source >= config.limits.max_connections_per_source:
                        if entry.tls_context is not None:
                            raise _Closed("overloaded", "too many connections from this source")
                        raise DialError(503, "overloaded", "too many connections from this source")
                    self.per_source[source_key] = from_source + 1
                    counted_source = source_key
                    if entry.tls_context is not None:
                        stage = "tls"
                        sock = entry.tls_context.wrap_socket(
                            sock, server_side=True, do_handshake_on_connect=False
                        )
                        tls_names = await self._tls_handshake(sock)
                    stage = "request"
                    request, early = await self._read_request(sock, config)
            except TimeoutError:
                if stage == "request":
                    raise RequestError(408, "timed out waiting for the request") from None
                raise _Closed("handshake_timeout", f"timed out waiting for the {stage}") from None

            target = request.target
            rec.target = target.authority
            credentials = await self._credentials(request, policy)
            source = Source(source_addr, source_port, tls_names)
            decision = decide(target, source, credentials, config)
            rec.client, rec.user = decision.client, decision.user
            if not decision.allowed:
                headers = PROXY_AUTHENTICATE if decision.status == 407 else ()
                self._answer(sock, decision.status, decision.reason, rec, decision.outcome, headers)
                return
            if decision.would_deny:
                rec.would_deny = True
                self.metrics.would_deny.labels(decision.client or "-").inc()
            elif config.allow.mode == "report":
                rec.would_deny = False

            connect_began = time.perf_counter()
            server_sock, early_reply = await self._open(task, decision, target, policy, rec)
            await _send_established(sock)
            if early_reply:
                await send_all(sock, early_reply)
            if early:
                await send_all(server_sock, early)
            connect_s = time.perf_counter() - connect_began
            rec.connect_s = round(connect_s, 6)
            self.metrics.connected(connect_s)
            rec.outcome, rec.status = "established", 200
            self.metrics.count("established")
            self._start_tunnel(
                sock, server_sock, decision, config, rec, len(early), len(early_reply), ended
            )
            handed_over = True  # the tunnel owns both sockets now, and calls `ended` at its end
        # One name per handler: compiled (setup.py), a name shared by handlers of different
        # exception types is given the first handler's type and the others fail a type check.
        except RequestError as refused:
            extra = ALLOW_CONNECT if refused.status == 405 else ()
            self._answer(sock, refused.status, refused.reason, rec, refused.outcome, extra)
        except DialError as unreachable:
            rec.upstream = unreachable.upstream
            self._answer(sock, unreachable.status, unreachable.reason, rec, unreachable.outcome)
        except _Closed as closed:
            rec.outcome, rec.error = closed.outcome, closed.reason
            self.metrics.count(closed.outcome)
        except OSError as exc:
            # The client went away while we were answering or connecting.
            if rec.outcome is None:
                rec.outcome = "bad_request"
                self.metrics.count("bad_request")
            rec.error = rec.error or f"client connection error: {exc.strerror or exc}"
        except asyncio.CancelledError:
            # Drain ran out of time while this connection was still being set up: the proxy
            # refused it for its own reasons, like a 503.
            if rec.outcome is None:
                rec.outcome, rec.error = "overloaded", "proxy shutting down"
                self.metrics.count("overloaded")
            raise
        finally:
            if not handed_over:
                if server_sock is not None:
                    server_sock.close()
                sock.close()
                ended()

    async def _read_proxy_header(
        self, sock: socket.socket, listener: Listener, peer_addr: IPAddress, peer_port: int
    ) -> tuple[IPAddress, int]:
        """Read exactly the PROXY header and nothing after it: the bytes that follow may be a TLS
        ClientHello that the TLS layer must read from the socket itself. We peek, and consume only
        bytes known to belong to the header."""
        mode = listener.proxy_protocol
        assert mode != "off"
        seen = b""
        while True:
            await wait_readable(sock)
            try:
                peeked = sock.recv(proxyproto.MAX_V2, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if not peeked:
                raise _Closed("bad_request", "closed before a PROXY protocol header")
            try:
                header = proxyproto.parse_proxy_header(seen + peeked, mode)
            except proxyproto.ProxyHeaderError as exc:
                self.metrics.handshake_failures.labels("proxy_protocol").inc()
                raise _Closed("bad_request", f"invalid PROXY protocol header: {exc}") from None
            if header is None:
                seen += sock.recv(len(peeked))  # all of it is header: the header is still longer
                continue
            sock.recv(header.length - len(seen))
            if header.source is None:
                return peer_addr, peer_port
            return parse_address(str(header.source[0])), header.source[1]

    async def _tls_handshake(self, sock: ssl.SSLSocket) -> tuple[str, ...]:
        try:
            await handshake(sock)
        except (ssl.SSLError, OSError) as exc:
            self.metrics.handshake_failures.labels("tls").inc()
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise _Closed("bad_request", f"TLS handshake failed: {reason}") from None
        return peer_names(sock)

    async def _read_request(self, sock: socket.socket, config: Config) -> tuple[Request, bytes]:
        limit = config.limits.max_request_bytes
        data = b""
        while True:
            chunk = await recv(sock, max(limit, 4096))
            if not chunk:
                raise _Closed("bad_request", "client closed before completing a request")
            data = data + chunk if data else chunk
            taken = take_request(data, limit)
            if taken is not None:
                return taken

    async def _credentials(self, request: Request, policy: Policy) -> Credentials | None:
        value = request.proxy_authorization
        if value is None:
            return None
        parsed = parse_basic_credentials(value)
        if parsed is None:
            return Credentials("", valid=False)
        user, password = parsed
        return Credentials(user, valid=await policy.auth.verify(user, password))

    async def _open(
        self,
        task: asyncio.Task[Any],
        decision: Decision,
        target: Target,
        policy: Policy,
        rec: AccessRecord,
    ) -> tuple[socket.socket, bytes]:
        """Open the server side: directly, or through an upstream proxy. Returns the socket and
        any bytes the upstream already sent past its 200 (they belong to the tunnel). `task`,
        the connection's, is what the connect timeout cancels."""
        config = policy.config
        if decision.route == "upstream" and policy.upstreams is not None:
            sock, rest, proxy = await policy.upstreams.open(
                target, config.timeouts.connect, self.metrics
            )
            rec.upstream = proxy.name
            rec.server_addr = peer_address(sock)
            return sock, rest
        stage = "resolve"
        try:
            with self.deadlines.limit(task, config.timeouts.connect):
                addrs = await resolve(target, config)
                usable = usable_addresses(addrs, config)
                if not usable:
                    raise DialError(403, "forbidden", "destination address is not allowed")
                stage = "connect"
                sock, reached = await open_tcp(usable, target.port)
        except TimeoutError:
            if stage == "resolve":
                raise DialError(
                    504, "resolve_failed", f"resolving {target.host} timed out"
                ) from None
            raise DialError(
                504, "connect_timeout", f"connecting to {target.authority} timed out"
            ) from None
        rec.server_addr = endpoint_text(reached, target.port)
        return sock, b""

    def _start_tunnel(
        self,
        client: socket.socket,
        server: socket.socket,
        decision: Decision,
        config: Config,
        rec: AccessRecord,
        early_up: int,
        early_down: int,
        connection_ended: Callable[[], None],
    ) -> None:
        """The tunnel runs on the poller's callbacks; no task waits for it. When it closes, its
        figures go to the metrics and the access record, and then `connection_ended` runs.

        `early_up`/`early_down`: bytes already passed on before the tunnel started (the
        client's early data, the upstream's bytes after its 200); they count as tunnel bytes."""
        label = decision.client or "-"
        tunnel = Tunnel(
            self.loop,
            client,
            server,
            idle_timeout=config.timeouts.idle,
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

    def _answer(
        self,
        sock: socket.socket,
        status: int,
        reason: str,
        rec: AccessRecord,
        outcome: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        rec.status, rec.outcome, rec.error = status, outcome, reason
        self.metrics.count(outcome)
        _send_quietly(sock, error_response(status, reason, headers))

    def _finish_record(self, rec: AccessRecord) -> None:
        self.metrics.count(rec.outcome or "bad_request")
        self.access_log.write(rec)

    # ---- periodic work ----------------------------------------------------------------------

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

    def _flush_log_tick(self) -> None:
        self.access_log.flush()
        self._log_flusher = self.loop.call_later(1.0, self._flush_log_tick)

    # ---- reload and shutdown ----------------------------------------------------------------

    def swap_policy(self, policy: Policy) -> None:
        """New requests use `policy`; running connections keep the one they started with."""
        old = self.policy
        self.policy = policy
        self.apply_limits(policy.config)
        if old.auth is not policy.auth:
            # Requests that began under the old policy may still be checking a password with it.
            self.loop.call_later(old.config.timeouts.handshake + 5.0, old.auth.close)

    async def drain(self, grace: float) -> None:
        """Stop accepting, let tunnels finish for up to `grace` seconds, then close the rest."""
        self.draining = True
        self.stop_listening()
        deadline = self.loop.time() + grace
        while (self.tasks or self.active) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for active in list(self.active):
            active.tunnel.fail("shutdown")
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        for handle in (self._flusher, self._log_flusher):
            if handle is not None:
                handle.cancel()
        self.stop_listening()
        if self.pipes is not None:
            self.pipes.close()
        self.io.close()
        self.deadlines.close()
        self.policy.auth.close()
        self.access_log.flush()
        self.metrics.flush()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort for error answers: the connection closes right after either way."""
    try:
        sock.send(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


async def _send_established(sock: socket.socket) -> None:
    if isinstance(sock, ssl.SSLSocket):
        await send_all(sock, ESTABLISHED)
        return
    # A fresh socket's send buffer always has room for 39 bytes; anything else is a dead client.
    sent = sock.send(ESTABLISHED)
    if sent != len(ESTABLISHED):
        raise OSError(errno.EAGAIN, "could not send the 200 response")
