"""One client connection, accept to access-log line, in the order of the request steps.

`Flow.serve` reads top to bottom as docs/configuration.md ("How a request is decided") lists the
steps: PROXY header, per-source limit, TLS handshake, request head, credentials and the
decision (admission, destination, route), the connector (resolve, check, connect), the 200, the
TLS guard when the deciding policy has one (read and check the ClientHello), then the tunnel.
Every refusal on the way is a
`Refusal` (connectproxy/outcome.py) carrying its status, outcome and reason; one handler answers
it and one `finally` closes and records, whichever way the connection ends.

Sockets are plain non-blocking sockets driven by the event loop, not asyncio streams: the tunnel
needs the raw descriptors for `splice(2)`, and owning them from accept to close keeps one code
path for every connection.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectproxy.config.model import Config, Listener, TLSMode
from connectproxy.credentials.auth import Authenticator
from connectproxy.matching.addresses import SocketAddress, parse_address, peer_host
from connectproxy.matching.netset import IPAddress
from connectproxy.net.connector import Connector
from connectproxy.net.deadlines import Deadlines
from connectproxy.net.sockio import (
    handshake,
    peer_names,
    recv,
    send_all,
    wait_readable,
    wait_writable,
)
from connectproxy.net.upstream import Upstreams
from connectproxy.observe.logs import AccessLog, AccessRecord
from connectproxy.observe.metrics import Metrics
from connectproxy.outcome import Outcome, Refusal
from connectproxy.policy.decide import Credentials, Source, decide
from connectproxy.policy.tlsguard import HELLO_LIMIT, Ended, Verdict, judge
from connectproxy.server.limits import TOO_MANY_FROM_SOURCE, SourceCounts, overloaded
from connectproxy.server.listening import Listening
from connectproxy.server.tunnels import Admission, Tunnels
from connectproxy.wire import proxyproto
from connectproxy.wire.http import (
    Request,
    RequestError,
    Target,
    parse_basic_credentials,
    take_request,
)
from connectproxy.wire.responses import (
    ALLOW_CONNECT,
    ESTABLISHED,
    PROXY_AUTHENTICATE,
    error_response,
)
from connectproxy.wire.tlshello import NeedMore

_HELLO_READ = 16384 + 5  # a largest TLS record with its header


@dataclass(frozen=True)
class Loaded:
    """A config and what is built from it (authenticator, upstreams with their TLS contexts),
    swapped together on reload; a connection keeps the one it started with."""

    config: Config
    auth: Authenticator
    upstreams: Upstreams | None = None


class Flow:
    """What every connection's flow shares: built once per server, not per connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        access_log: AccessLog,
        deadlines: Deadlines,
        tunnels: Tunnels,
        sources: SourceCounts,
        connection_closed: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.access_log = access_log
        self.deadlines = deadlines
        self.tunnels = tunnels
        self.sources = sources
        self.connection_closed = connection_closed  # the server's count of open connections

    async def serve(
        self,
        sock: socket.socket,
        peer: SocketAddress,
        entry: Listening,
        loaded: Loaded,
        connector: Connector,
    ) -> None:
        """`peer` is the accepted socket's address: (host, port) for IPv4, a 4-tuple for IPv6
        (a dual-stack listener's IPv4 clients too, as ::ffff:a.b.c.d)."""
        config = loaded.config
        listener = entry.listener
        began = time.perf_counter()  # the loop's clock ticks in whole milliseconds
        rec = AccessRecord(
            start=time.time(),
            client_addr=peer_host(peer[0]),
            client_port=peer[1],
            listener=listener.address,
        )
        source_addr = parse_address(peer[0])
        source_port: int = peer[1]
        tls_names: tuple[str, ...] = ()
        counted_source: bytes | None = None
        server_sock: socket.socket | None = None
        stage = "proxy header" if listener.proxy_protocol != "off" else "request"
        handed_over = False
        # For the deadlines; looked up once, and given the loop asyncio does not look that up.
        task = asyncio.current_task(self.loop)
        assert task is not None

        def ended() -> None:
            """The connection's last step, once its sockets are closed, by whichever path."""
            if counted_source is not None:
                self.sources.release(counted_source)
            self.connection_closed()
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
                    limit = config.limits.max_connections_per_source
                    if not self.sources.take(source_key, limit):
                        raise overloaded(TOO_MANY_FROM_SOURCE, entry.tls_context is None)
                    counted_source = source_key
                    if entry.tls_context is not None:
                        stage = "tls"
                        sock = entry.tls_context.wrap_socket(
                            sock, server_side=True, do_handshake_on_connect=False
                        )
                        tls_names = await self._tls_handshake(sock)
                    stage = "request"
                    request, early = await _read_request(sock, config)
            except TimeoutError:
                if stage == "request":
                    raise RequestError(408, "timed out waiting for the request") from None
                raise Refusal(
                    None, "handshake_timeout", f"timed out waiting for the {stage}"
                ) from None

            target = request.target
            rec.target = target.authority
            credentials = await _credentials(request, loaded.auth, config)
            source = Source(source_addr, source_port, tls_names)
            decision = decide(target, source, credentials, config)
            rec.client, rec.user, rec.policy = decision.client, decision.user, decision.policy
            if not decision.allowed:
                headers = PROXY_AUTHENTICATE if decision.status == 407 else ()
                self._answer(sock, decision.status, decision.reason, rec, decision.outcome, headers)
                return
            if decision.would_deny:
                rec.would_deny = True
                self.metrics.would_deny_seen(decision.client or "-", decision.policy or "-")
            elif (
                config.report_mode
                and decision.policy is not None
                and config.policies[decision.policy].mode == "report"
            ):
                rec.would_deny = False  # a report-mode policy that allowed it outright

            connect_began = time.perf_counter()
            dialed = await connector.open(target, decision.route, task)
            server_sock = dialed.sock
            rec.upstream, rec.server_addr = dialed.upstream, dialed.server_addr
            await _send_established(sock)
            if dialed.early:
                await send_all(sock, dialed.early)
            connect_s = time.perf_counter() - connect_began
            rec.connect_s = round(connect_s, 6)
            self.metrics.connected(connect_s)
            rec.status = 200
            if config.tls_guard and decision.policy is not None:
                guard = config.policies[decision.policy].tls
                if guard != "off":
                    # SPEC 5.1: only bytes the guard has passed reach the destination, and
                    # first of all the ClientHello exactly as it came.
                    rec.bytes_server_to_client = len(dialed.early)
                    early = await self._guard(sock, guard, target, early, config, task, rec)
            if early:
                await send_all(server_sock, early)
            rec.outcome = "established"
            self.metrics.count("established")
            self.tunnels.start(
                sock,
                server_sock,
                decision.client or "-",
                config.timeouts.idle,
                rec,
                len(early),
                len(dialed.early),
                ended,
                Admission(target, source, credentials, config),
            )
            handed_over = True  # the tunnel owns both sockets now, and calls `ended` at its end
        except Refusal as refused:
            upstream = getattr(refused, "upstream", None)
            if upstream is not None:
                rec.upstream = upstream
            if refused.status is None:
                rec.outcome, rec.error = refused.outcome, refused.reason
                self.metrics.count(refused.outcome)
            else:
                extra = ALLOW_CONNECT if refused.status == 405 else ()
                self._answer(sock, refused.status, refused.reason, rec, refused.outcome, extra)
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
                self.tunnels.io.forget(sock.fileno())  # the TLS guard may have registered it
                sock.close()
                ended()

    async def _guard(
        self,
        sock: socket.socket,
        mode: TLSMode,
        target: Target,
        data: bytes,
        config: Config,
        task: asyncio.Task[Any],
        rec: AccessRecord,
    ) -> bytes:
        """Read the client's ClientHello into `data` (what came with the CONNECT head is its
        start), up to 64 KiB and within `timeouts.handshake` of the 200, and check it. Returns
        every byte read, to be forwarded unchanged; raises the refusal (no HTTP answer is
        possible after the 200) when the policy refuses it.

        Parsed again only once the buffer holds what the last parse said it needs at least, so
        a hello trickled in one byte at a time costs a few parses, not one per byte."""
        host, ip_literal = target.host, target.ip is not None
        buf = bytearray(data)
        verdict = judge(mode, host, ip_literal, buf) if buf else None
        needed = verdict.needed if isinstance(verdict, NeedMore) else 1
        ended: Ended = None
        if not isinstance(verdict, Verdict):
            self.tunnels.busy_poll.expect()  # the client's hello follows the 200 at once
            try:
                with self.deadlines.limit(task, config.timeouts.handshake):
                    while True:
                        # One TLS record's worth a read (a fresh 64 KiB buffer per read would
                        # cost more than a real hello's bytes); the limit caps the last one.
                        chunk = await self._read_hello(
                            sock, min(_HELLO_READ, HELLO_LIMIT - len(buf))
                        )
                        if not chunk:
                            ended = "eof"
                            break
                        buf += chunk
                        if len(buf) < needed and len(buf) < HELLO_LIMIT:
                            continue
                        verdict = judge(mode, host, ip_literal, buf)
                        if isinstance(verdict, Verdict):
                            break
                        needed = verdict.needed
            except TimeoutError:
                ended = "timeout"
            if ended is not None:
                verdict = judge(mode, host, ip_literal, buf, ended)
        assert isinstance(verdict, Verdict)  # `ended` makes judge decide
        rec.hello = verdict.seen
        if verdict.reason is not None:
            self.metrics.tls_refused_seen(rec.client or "-", verdict.reason)
            raise Refusal(None, "tls_refused", verdict.error or verdict.reason)
        return bytes(buf)

    async def _read_hello(self, sock: socket.socket, size: int) -> bytes:
        """Up to `size` bytes of the client's hello; b"" at end of stream. Waits first: the
        client sends only once it has the 200, which has only just left. The wait is on the
        tunnels' poller (`Poller.readable`), where the tunnel's reader will take the socket
        over as it is."""
        fd = sock.fileno()
        writable = False
        while True:
            if writable:
                await wait_writable(sock)  # a TLS listener's client renegotiating
            else:
                await self.tunnels.io.readable(fd)
            try:
                data = sock.recv(size)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                writable = False
                continue
            except ssl.SSLWantWriteError:
                writable = True
                continue
            except ssl.SSLZeroReturnError:
                return b""
            if isinstance(sock, ssl.SSLSocket) and (left := sock.pending()):
                data += sock.recv(left)  # decrypted bytes no readiness event will announce
            return data

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
                raise Refusal(None, "bad_request", "closed before a PROXY protocol header")
            try:
                header = proxyproto.parse_proxy_header(seen + peeked, mode)
            except proxyproto.ProxyHeaderError as exc:
                self.metrics.handshake_failed("proxy_protocol")
                raise Refusal(
                    None, "bad_request", f"invalid PROXY protocol header: {exc}"
                ) from None
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
            self.metrics.handshake_failed("tls")
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise Refusal(None, "bad_request", f"TLS handshake failed: {reason}") from None
        return peer_names(sock)

    def _answer(
        self,
        sock: socket.socket,
        status: int,
        reason: str,
        rec: AccessRecord,
        outcome: Outcome,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        rec.status, rec.outcome, rec.error = status, outcome, reason
        self.metrics.count(outcome)
        send_quietly(sock, error_response(status, reason, headers))


async def _read_request(sock: socket.socket, config: Config) -> tuple[Request, bytes]:
    limit = config.limits.max_request_bytes
    data = b""
    while True:
        chunk = await recv(sock, max(limit, 4096))
        if not chunk:
            raise Refusal(None, "bad_request", "client closed before completing a request")
        data = data + chunk if data else chunk
        taken = take_request(data, limit)
        if taken is not None:
            return taken


async def _credentials(request: Request, auth: Authenticator, config: Config) -> Credentials | None:
    """The request's Basic credentials, checked; None when it sent none or when the config has
    no users to check them against (then they are ignored: `decide.admit`)."""
    value = request.proxy_authorization
    if value is None or not config.checks_credentials:
        return None
    parsed = parse_basic_credentials(value)
    if parsed is None:
        return Credentials("", valid=False)
    user, password = parsed
    return Credentials(user, valid=await auth.verify(user, password))


def send_quietly(sock: socket.socket, data: bytes) -> None:
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
