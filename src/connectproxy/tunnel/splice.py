"""Copying bytes both ways between two connected sockets: the hot path.

The tunnel runs on readiness callbacks (`loop.add_reader`/`add_writer`), not coroutines, so a chunk
costs two system calls and a couple of attribute updates: no task switch, no allocation, no log
line. On Linux, plain sockets are joined with `splice(2)` through a pipe, so the bytes never enter
Python at all. Pipes are lent from a small pool only while a chunk is in flight, which keeps an idle
tunnel at exactly its two sockets.

Flow control is the same in both modes: a direction reads at most one chunk, and while that chunk
cannot be written it stops reading. A slow receiver therefore slows the sender down through TCP, and
memory per tunnel is bounded by one chunk per direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from connectproxy.net.busypoll import BusyPoll
from connectproxy.tunnel.pipes import PipePool
from connectproxy.tunnel.poller import Poller

CHUNK = 1 << 16  # copy mode: bytes per read into the shared buffer
_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

splice_available = _SPLICE is not None


class Tunnel:
    """Both directions of one tunnel and the state they share.

    The tunnel ends when both directions have ended or one has failed: it closes both sockets
    at once, from the callback that saw the end, and then calls `on_done`. `error` says why a
    tunnel ended abnormally (reset, idle timeout), or is None for a clean close."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        server: socket.socket,
        *,
        idle_timeout: float,
        pipes: PipePool | None,
        buffer: memoryview,
        io: Poller,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self.loop = loop
        self.io = io
        self.busy_poll = busy_poll
        self.client = client
        self.server = server
        self.idle_timeout = idle_timeout
        self.last_active = loop.time()
        self.error: str | None = None
        self.closed = False
        self._on_done: Callable[[], None] | None = None
        use_splice = (
            pipes is not None
            and not isinstance(client, ssl.SSLSocket)
            and not isinstance(server, ssl.SSLSocket)
        )
        # Both directions start by copying through the shared buffer: for the small messages
        # of a TLS handshake or a sensor's telemetry that is two system calls a chunk, where
        # splice needs four. A direction whose read fills the whole buffer is carrying bulk data
        # and moves to splice (`to_splice`), where bytes stay in the kernel.
        self.pipes = pipes if use_splice else None
        self.upstream: _Flow = _CopyFlow(self, client, server, buffer)  # client -> server
        self.downstream: _Flow = _CopyFlow(self, server, client, buffer)  # server -> client
        self._idle: asyncio.TimerHandle | None = None

    @property
    def bytes_client_to_server(self) -> int:
        return self.upstream.count

    @property
    def bytes_server_to_client(self) -> int:
        return self.downstream.count

    def start(self, on_done: Callable[[], None] | None = None) -> None:
        """Start both directions. Nothing waits on the tunnel: it reports its end to `on_done`,
        which saves the server a task switch per connection."""
        self._on_done = on_done
        self.upstream.start()
        self.downstream.start()
        self._idle = self.loop.call_at(self.last_active + self.idle_timeout, self._check_idle)

    async def run(self) -> None:
        """Start and wait for the end, for a caller that wants a coroutine."""
        ended: asyncio.Future[None] = self.loop.create_future()

        def wake() -> None:
            if not ended.done():  # cancelled with the task that awaits it
                ended.set_result(None)

        self.start(wake)
        try:
            await ended
        finally:
            self.close()

    def to_splice(self, flow: _CopyFlow) -> None:
        """Move one direction from copying to splice(2), keeping its byte count."""
        assert self.pipes is not None
        spliced = _SpliceFlow(self, flow.src, flow.dst, self.pipes)
        spliced.count = flow.count
        if flow is self.upstream:
            self.upstream = spliced
        else:
            self.downstream = spliced
        spliced.start()  # replaces the copy flow's reader on the same descriptor

    def _check_idle(self) -> None:
        deadline = self.last_active + self.idle_timeout
        if self.loop.time() >= deadline:
            self.fail("idle timeout")
        else:
            self._idle = self.loop.call_at(deadline, self._check_idle)

    def direction_ended(self, flow: _Flow, src: socket.socket, dst: socket.socket) -> None:
        """`flow` read the end of its stream from `src`: pass it on to `dst`, or, if the other
        direction has ended already, end the tunnel."""
        flow.ended = True
        if self.busy_poll is not None:
            self.busy_poll.expect()  # a client that closes one tunnel may open the next at once
        other = self.downstream if flow is self.upstream else self.upstream
        if not other.ended:
            self.io.remove_reader(src.fileno())
            _shutdown_write(dst)
            return
        if isinstance(dst, ssl.SSLSocket):
            _shutdown_write(dst)  # its close_notify: a TLS peer must see a clean end
        # Closing `dst` sends the FIN a shutdown would, and the close takes both sockets out of
        # the poller's epoll set: no shutdown and no epoll_ctl for the last direction.
        self.close()

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.close()

    def close(self) -> None:
        """Stop both directions, close both sockets and call `on_done`; only the first call
        does anything."""
        if self.closed:
            return
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.upstream.stop()
        self.downstream.stop()
        # The flows point back at this tunnel; replacing them breaks the cycle so a finished
        # tunnel is freed by reference counting at once instead of waiting for the collector.
        self.upstream = _Finished(self.upstream.count)
        self.downstream = _Finished(self.downstream.count)
        for sock in (self.client, self.server):
            fd = sock.fileno()
            if fd >= 0:
                self.io.forget(fd)
                sock.close()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()


class _Finished:
    """What a direction becomes when its tunnel closes: its byte count and nothing else."""

    __slots__ = ("count", "ended")

    def __init__(self, count: int) -> None:
        self.count = count
        self.ended = True

    def start(self) -> None:
        """A finished direction never starts again."""

    def stop(self) -> None:
        """Already stopped."""


class _Flow(Protocol):
    """One direction, src -> dst: bytes delivered so far, and whether it has ended."""

    count: int
    ended: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _shutdown_write(sock: socket.socket) -> None:
    """Pass an end of stream on. For TLS that is close_notify and then the TCP FIN: `unwrap`
    sends close_notify and stops at waiting for the peer's (SSLWantReadError), which leaves the
    TLS layer able to go on reading the other direction until it ends too."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sock.unwrap()
            socket.socket.shutdown(sock, socket.SHUT_WR)  # SSLSocket.shutdown drops the TLS layer
            return
        sock.shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass


def _describe(exc: OSError) -> str:
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


class _SpliceFlow:
    """src socket -> pipe -> dst socket, inside the kernel."""

    __slots__ = (
        "blocked",
        "count",
        "dst",
        "dst_fd",
        "ended",
        "in_pipe",
        "io",
        "loop",
        "pipe",
        "pool",
        "src",
        "src_fd",
        "tunnel",
    )

    def __init__(
        self, tunnel: Tunnel, src: socket.socket, dst: socket.socket, pool: PipePool
    ) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.io = tunnel.io
        self.src = src
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.dst = dst
        self.pool = pool
        self.pipe: tuple[int, int, int] | None = None
        self.in_pipe = 0
        self.count = 0
        self.blocked = False
        self.ended = False

    def start(self) -> None:
        self.io.add_reader(self.src_fd, self.on_readable)

    def on_readable(self) -> None:
        # Reading only starts when the pipe is empty (drain() returns it then), so every path
        # below that does not fill it hands it straight back: an idle direction holds no pipe.
        try:
            pipe = self.pool.take()
        except OSError as exc:  # out of descriptors: end this tunnel, freeing two of them
            self.tunnel.fail(_describe(exc))
            return
        self.pipe = pipe
        try:
            n = _SPLICE(self.src_fd, pipe[1], pipe[2], flags=_SPLICE_FLAGS)  # type: ignore[misc]
        except _WOULD_BLOCK:
            self._give_back()
            return
        except OSError as exc:
            self._give_back()
            self.tunnel.fail(_describe(exc))
            return
        if n == 0:
            self._give_back()
            self.tunnel.direction_ended(self, self.src, self.dst)
            return
        self.in_pipe = n
        self.tunnel.last_active = self.loop.time()
        self.drain()

    def drain(self) -> None:
        pipe = self.pipe
        assert pipe is not None
        while self.in_pipe:
            try:
                m = _SPLICE(pipe[0], self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)  # type: ignore[misc]
            except _WOULD_BLOCK:
                if not self.blocked:
                    self.blocked = True
                    self.io.remove_reader(self.src_fd)
                    self.io.add_writer(self.dst_fd, self.drain)
                return
            except OSError as exc:
                self.tunnel.fail(_describe(exc))
                return
            self.in_pipe -= m
            self.count += m
        self.pool.give(pipe)
        self.pipe = None
        if self.blocked:
            self.blocked = False
            self.io.remove_writer(self.dst_fd)
            self.io.add_reader(self.src_fd, self.on_readable)

    def _give_back(self) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            self.pool.give(pipe)

    def stop(self) -> None:
        """The tunnel is closing (and forgets both descriptors in the poller): drop the pipe."""
        self.ended = True
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            if self.in_pipe:
                # Bytes still in the pipe belong to a dead tunnel: never lend it out again.
                os.close(pipe[0])
                os.close(pipe[1])
            else:
                self.pool.give(pipe)


class _CopyFlow:
    """recv_into a shared buffer, send straight from it; for TLS sockets and systems without
    splice. Only when the destination cannot take the whole chunk is the rest copied out of the
    shared buffer, so allocation happens under backpressure only."""

    __slots__ = (
        "blocked",
        "buffer",
        "count",
        "dst",
        "ended",
        "io",
        "loop",
        "pending",
        "src",
        "tunnel",
    )

    def __init__(
        self, tunnel: Tunnel, src: socket.socket, dst: socket.socket, buffer: memoryview
    ) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.io = tunnel.io
        self.src = src
        self.dst = dst
        self.buffer = buffer
        self.pending = b""
        self.count = 0
        self.blocked = False
        self.ended = False

    def start(self) -> None:
        self.io.add_reader(self.src.fileno(), self.on_readable)

    def on_readable(self) -> None:
        buf = self.buffer
        src = self.src
        while True:
            try:
                n = src.recv_into(buf)
            except _WOULD_BLOCK:
                return
            except ssl.SSLZeroReturnError:
                n = 0  # close_notify: the TLS peer's end of stream
            except OSError as exc:
                self.tunnel.fail(_describe(exc))
                return
            if n == 0:
                self.tunnel.direction_ended(self, src, self.dst)
                return
            self.tunnel.last_active = self.loop.time()
            try:
                m = self.dst.send(buf[:n])
            except _WOULD_BLOCK:
                m = 0
            except OSError as exc:
                self.tunnel.fail(_describe(exc))
                return
            self.count += m
            if m < n:
                self.pending = bytes(buf[m:n])
                self.blocked = True
                self.io.remove_reader(src.fileno())
                self.io.add_writer(self.dst.fileno(), self.on_writable)
                return
            if n == len(buf) and self.tunnel.pipes is not None:
                self.tunnel.to_splice(self)  # a full buffer: bulk data, let the kernel move it
                return
            # A TLS socket may hold decrypted bytes that no readiness event will announce.
            if not (isinstance(src, ssl.SSLSocket) and src.pending()):
                return

    def on_writable(self) -> None:
        try:
            m = self.dst.send(self.pending)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self.tunnel.fail(_describe(exc))
            return
        self.count += m
        self.pending = self.pending[m:]
        if self.pending:
            return
        self.blocked = False
        self.io.remove_writer(self.dst.fileno())
        self.io.add_reader(self.src.fileno(), self.on_readable)
        self.on_readable()

    def stop(self) -> None:
        """The tunnel is closing (and forgets both descriptors in the poller)."""
        self.ended = True
        self.pending = b""
