"""`dial.open_tcp`: the address it reports is the one it reached, so the access log and
`connectproxy doctor` name the destination without asking the kernel again."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import sys
from collections.abc import Iterator

import pytest

from connectproxy.net.dial import DialError, open_tcp

LISTENING = ipaddress.ip_address("127.0.0.1")
REFUSING = ipaddress.ip_address("127.0.0.2")  # loopback too, but nothing listens there


@pytest.fixture
def port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind((str(LISTENING), 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "addrs",
    [[LISTENING], [REFUSING, LISTENING], [LISTENING, REFUSING]],
    ids=["one address", "the second answers", "the first answers"],
)
async def test_reports_the_address_it_reached(
    port: int, addrs: list[ipaddress.IPv4Address]
) -> None:
    sock, reached = await open_tcp(list(addrs), port)
    try:
        assert reached == LISTENING
        assert sock.getpeername() == (str(LISTENING), port)
    finally:
        sock.close()


async def test_no_address_answers(port: int) -> None:
    with pytest.raises(DialError) as caught:
        await open_tcp([REFUSING, REFUSING], port)
    assert caught.value.outcome == "connect_failed"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_attempt_still_pending_is_closed_when_another_wins() -> None:
    """The first address never answers (its listener's queue is full, so the kernel drops the
    SYN); 250 ms later the second is tried and wins. The pending attempt is cancelled and its
    socket closed, and no exception of it is left behind."""
    with socket.socket() as full, socket.socket() as listening:
        full.bind(("127.0.0.3", 0))
        full.listen(0)
        port = full.getsockname()[1]
        listening.bind((str(LISTENING), port))
        listening.listen(8)
        queued = [socket.socket() for _ in range(2)]  # the first fills the queue, then SYNs drop
        for s in queued:
            s.setblocking(False)
            s.connect_ex(("127.0.0.3", port))
        before = _open_descriptors()
        try:
            sock, reached = await open_tcp([ipaddress.ip_address("127.0.0.3"), LISTENING], port)
            sock.close()
            await asyncio.sleep(0.01)  # the cancelled attempt finishes on the next iterations
            assert reached == LISTENING
            assert _open_descriptors() == before
            assert sys.exc_info() == (None, None, None)
        finally:
            for s in queued:
                s.close()
