"""`dial.open_tcp`: the address it reports is the one it reached, so the access log and
`connectproxy doctor` name the destination without asking the kernel again."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest

from connectproxy.dial import DialError, open_tcp

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
