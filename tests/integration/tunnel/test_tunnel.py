"""The tunnel on its own, in both modes: splice(2) through pooled pipes, and the copy fallback used
for TLS sockets and systems without splice. Real connected TCP sockets on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time

import pytest

from connectproxy.net.busypoll import BusyPoll
from connectproxy.tunnel.pipes import PipePool
from connectproxy.tunnel.poller import Poller
from connectproxy.tunnel.splice import CHUNK, Tunnel, splice_available

MODES = ["splice", "copy"] if splice_available else ["copy"]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


async def make_tunnel(
    mode: str,
    idle: float = 30.0,
    *,
    io: Poller | None = None,
    pool: PipePool | None = None,
    busy_poll: BusyPoll | None = None,
) -> tuple[Tunnel, socket.socket, socket.socket, PipePool | None]:
    """client_end <-> [proxy_client | tunnel | proxy_server] <-> server_end

    `io` and `pool` are shared between tunnels when given, as the server shares them."""
    client_end, proxy_client = tcp_pair()
    proxy_server, server_end = tcp_pair()
    if pool is None and mode == "splice":
        pool = PipePool()
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(
        loop,
        proxy_client,
        proxy_server,
        idle_timeout=idle,
        pipes=pool,
        buffer=memoryview(bytearray(CHUNK)),
        io=io or Poller(loop),
        busy_poll=busy_poll,
    )
    return tunnel, client_end, server_end, pool


def close_all(client: socket.socket, server: socket.socket, pool: PipePool | None) -> None:
    """A test's ends of the tunnel and its pipe pool, whatever state they are in."""
    client.close()
    server.close()
    if pool is not None:
        pool.close()


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def recv_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while data := await loop.sock_recv(sock, 1 << 16):
        out += data
    return bytes(out)


@pytest.mark.parametrize("mode", MODES)
async def test_bytes_both_ways_and_exact_counts(mode: str) -> None:
    tunnel, client, server, pool = await make_tunnel(mode)
    task = asyncio.ensure_future(tunnel.run())
    up = os.urandom(3 * 1024 * 1024 + 7)
    down = os.urandom(2 * 1024 * 1024 + 3)

    async def client_side() -> bytes:
        await send_all(client, up)
        client.shutdown(socket.SHUT_WR)
        return await recv_until_eof(client)

    async def server_side() -> bytes:
        await send_all(server, down)
        server.shutdown(socket.SHUT_WR)
        return await recv_until_eof(server)

    got_down, got_up = await asyncio.gather(client_side(), server_side())
    await asyncio.wait_for(task, 5)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert tunnel.bytes_client_to_server == len(up)
    assert tunnel.bytes_server_to_client == len(down)
    assert tunnel.error is None
    assert tunnel.client.fileno() == -1 and tunnel.server.fileno() == -1
    close_all(client, server, pool)


@pytest.mark.parametrize("mode", MODES)
async def test_half_close_keeps_the_other_direction(mode: str) -> None:
    tunnel, client, server, pool = await make_tunnel(mode)
    task = asyncio.ensure_future(tunnel.run())
    loop = asyncio.get_running_loop()
    client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(loop.sock_recv(server, 10), 5) == b""  # EOF passed on
    await send_all(server, b"late reply")
    assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"late reply"
    assert not task.done()
    server.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(task, 5)
    close_all(client, server, pool)


@pytest.mark.parametrize("mode", MODES)
async def test_an_end_of_stream_starts_polling_for_the_next_connection(mode: str) -> None:
    loop = asyncio.get_running_loop()
    poll = BusyPoll(loop)
    for _ in range(4):
        poll.arrived()  # accepts in quick succession: the window is open
    await asyncio.sleep(0.005)
    tunnel, client, server, pool = await make_tunnel(mode, busy_poll=poll)
    task = asyncio.ensure_future(tunnel.run())
    before = time.monotonic_ns()
    client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(loop.sock_recv(server, 10), 5) == b""
    assert poll.until_ns > before  # the end of stream opened a window
    server.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(task, 5)
    close_all(client, server, pool)


@pytest.mark.parametrize("mode", MODES)
async def test_slow_reader_stops_the_sender(mode: str) -> None:
    """With the client not reading, the tunnel stops taking bytes from the server: what the
    server managed to write is bounded by socket buffers plus one chunk, not by our memory."""
    tunnel, client, server, pool = await make_tunnel(mode)
    for s in (client, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    task = asyncio.ensure_future(tunnel.run())
    written = 0
    block = b"x" * 65536
    for _ in range(2000):
        try:
            written += server.send(block)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            try:
                written += server.send(block)
            except BlockingIOError:
                break
    await asyncio.sleep(0.2)
    # Kernel buffers on loopback are a few MiB at most; 128 MiB would mean we buffered it.
    assert written < 32 * 1024 * 1024
    assert tunnel.bytes_server_to_client <= written
    tunnel.fail("test over")
    await asyncio.wait_for(task, 5)
    close_all(client, server, pool)


@pytest.mark.parametrize("mode", MODES)
async def test_idle_timeout(mode: str) -> None:
    tunnel, client, server, pool = await make_tunnel(mode, idle=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(tunnel.run(), 5)
    assert tunnel.error == "idle timeout"
    assert 0.25 < loop.time() - began < 2
    close_all(client, server, pool)


@pytest.mark.parametrize("mode", MODES)
async def test_reset_ends_the_tunnel_with_an_error(mode: str) -> None:
    tunnel, client, server, pool = await make_tunnel(mode)
    task = asyncio.ensure_future(tunnel.run())
    await send_all(client, b"hello")
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    server.close()  # RST towards the proxy
    await asyncio.sleep(0.05)
    await send_all(client, b"more")  # writing into the reset socket fails
    await asyncio.wait_for(task, 5)
    assert tunnel.error is not None
    client.close()
    if pool is not None:
        pool.close()


async def test_small_messages_are_copied_and_bulk_moves_to_splice() -> None:
    """A small exchange never borrows a pipe; a direction carrying bulk data moves to splice(2)
    and returns its pipe once the bytes are through, so an idle tunnel owns just its sockets."""
    tunnel, client, server, pool = await make_tunnel("splice")
    assert pool is not None
    task = asyncio.ensure_future(tunnel.run())
    loop = asyncio.get_running_loop()
    await send_all(client, b"ping")
    assert await asyncio.wait_for(loop.sock_recv(server, 10), 5) == b"ping"
    assert type(tunnel.upstream).__name__ == "_CopyFlow"
    assert pool._free == []  # no pipe was ever needed

    bulk = os.urandom(4 * 1024 * 1024)
    sender = asyncio.ensure_future(send_all(server, bulk))
    got = bytearray()
    while len(got) < len(bulk):
        got += await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 5)
    await sender
    assert bytes(got) == bulk
    assert type(tunnel.downstream).__name__ == "_SpliceFlow"
    assert tunnel.bytes_server_to_client == len(bulk)
    await asyncio.sleep(0.05)
    assert tunnel.downstream.pipe is None  # type: ignore[attr-defined]
    assert len(pool._free) == 1  # returned, empty, ready for the next chunk
    tunnel.fail("done")
    await task
    client.close()
    server.close()
    pool.close()


async def test_one_poller_watches_a_reused_descriptor_number_again() -> None:
    """The server shares one Poller between all tunnels, and the kernel hands a closed tunnel's
    descriptor numbers to the next sockets. The Poller records what its epoll set holds, so
    `forget` before close must leave no record that would stop the new socket being registered."""
    loop = asyncio.get_running_loop()
    io = Poller(loop)
    old, old_peer = socket.socketpair()
    number = old.fileno()
    io.add_reader(number, lambda: None)
    io.add_writer(number, lambda: None)
    io.forget(number)
    old.close()
    old_peer.close()
    new, new_peer = socket.socketpair()
    assert new.fileno() == number  # the lowest free number comes back
    readable = asyncio.Event()

    def on_readable() -> None:
        io.remove_reader(number)
        readable.set()

    io.add_reader(number, on_readable)
    new_peer.send(b"x")
    await asyncio.wait_for(readable.wait(), 2)
    io.forget(number)
    new.close()
    new_peer.close()
    io.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_socket_waited_on_with_readable_is_taken_over_by_its_tunnel(mode: str) -> None:
    """The TLS guard waits for the client's hello with `Poller.readable` and then starts the
    tunnel on the same Poller: the tunnel's reader replaces the guard's on the descriptor that
    is already registered, and the bytes that come next still flow."""
    io = Poller(asyncio.get_running_loop())
    tunnel, client_end, server_end, pool = await make_tunnel(mode, io=io)
    fd = tunnel.client.fileno()
    waiting = io.readable(fd)
    assert not waiting.done()
    client_end.send(b"hello")
    await asyncio.wait_for(waiting, 2)
    assert tunnel.client.recv(16) == b"hello"  # what the guard reads itself
    running = asyncio.ensure_future(tunnel.run())
    await send_all(client_end, b"and the rest")
    client_end.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(server_end) == b"and the rest"
    server_end.close()
    assert await recv_until_eof(client_end) == b""
    await asyncio.wait_for(running, 5)
    assert tunnel.error is None
    close_all(client_end, server_end, pool)
    io.close()


@pytest.mark.parametrize("mode", MODES)
async def test_tunnels_one_after_another_on_one_poller(mode: str) -> None:
    """Sequential tunnels sharing a Poller, as in the server: each one's bytes arrive."""
    io = Poller(asyncio.get_running_loop())
    pool = PipePool() if mode == "splice" else None
    for round_ in range(20):
        tunnel, client_end, server_end, _ = await make_tunnel(mode, io=io, pool=pool)
        running = asyncio.ensure_future(tunnel.run())
        message = f"round {round_}".encode()
        await send_all(client_end, message)
        client_end.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(server_end) == message
        server_end.close()
        assert await recv_until_eof(client_end) == b""
        await asyncio.wait_for(running, 5)
        assert tunnel.error is None and tunnel.bytes_client_to_server == len(message)
        client_end.close()
    if pool is not None:
        pool.close()
    io.close()
