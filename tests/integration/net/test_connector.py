"""The `Connector`: the one way out that the server and `doctor` share, used here directly.

Each case is a real connection on loopback: the hosts map and the deny list decide which
addresses may be used, and the upstream case goes through a real listening socket that answers
like an upstream proxy.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectproxy.config.model import Config
from connectproxy.configfile.load import config_from_mapping
from connectproxy.net.connector import AddressesDenied, Connector
from connectproxy.net.deadlines import Deadlines
from connectproxy.net.dial import DialError
from connectproxy.net.upstream import Upstreams
from connectproxy.wire.http import parse_target
from tests.support import LOOPBACK_OK_DENY, free_port

SENSOR = "sensor.azure-devices.net"


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def _config(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "allow": {"ports": [443], "domains": [".azure-devices.net"]},
        "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
    }
    data.update(overrides)
    return config_from_mapping(data, "connector-test", Path("."))


def _connector(config: Config, failed: list[str] | None = None) -> Connector:
    upstreams = Upstreams(config.upstream) if config.upstream is not None else None
    seen = failed if failed is not None else []
    return Connector(config, upstreams, Deadlines(asyncio.get_running_loop()), seen.append)


async def _open(connector: Connector, authority: str, route: Any = "direct") -> Any:
    task = asyncio.current_task()
    assert task is not None
    return await connector.open(parse_target(authority), route, task)


async def test_direct_reaches_the_mapped_address(listening: int) -> None:
    dialed = await _open(_connector(_config()), f"{SENSOR}:{listening}")
    try:
        assert dialed.server_addr == f"127.0.0.1:{listening}"
        assert dialed.sock.getpeername() == ("127.0.0.1", listening)
        assert [str(a) for a in dialed.addresses] == ["127.0.0.1"]
        assert dialed.upstream is None and dialed.early == b""
    finally:
        dialed.sock.close()


async def test_every_address_denied_is_403_and_names_them_for_doctor(listening: int) -> None:
    """The default deny list refuses loopback: nothing is connected to."""
    config = _config(destinations={"hosts": {SENSOR: "127.0.0.1"}})
    with pytest.raises(AddressesDenied) as caught:
        await _open(_connector(config), f"{SENSOR}:{listening}")
    assert (caught.value.status, caught.value.outcome) == (403, "forbidden")
    assert [str(a) for a in caught.value.addresses] == ["127.0.0.1"]
    assert "127.0.0.1" not in caught.value.reason  # the client's answer names no address


async def test_a_refused_connection_is_502() -> None:
    with pytest.raises(DialError) as caught:
        await _open(_connector(_config()), f"{SENSOR}:{free_port()}")
    assert (caught.value.status, caught.value.outcome) == (502, "connect_failed")


async def test_through_an_upstream_and_its_failure_reported(listening: int) -> None:
    """A dead upstream first (its failure reaches the callback), then one that answers 200 and
    sends the tunnel's first bytes with its answer."""
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(8)
        port = int(upstream.getsockname()[1])
        dead = free_port()

        def answer() -> None:
            conn, _ = upstream.accept()
            with conn:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += conn.recv(1)
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nearly")
                conn.recv(1)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        failed: list[str] = []
        config = _config(
            upstream={
                "proxies": [
                    {"url": f"http://127.0.0.1:{dead}"},
                    {"url": f"http://127.0.0.1:{port}"},
                ]
            }
        )
        dialed = await _open(_connector(config, failed), f"{SENSOR}:443", route="upstream")
        try:
            assert dialed.upstream == f"http://127.0.0.1:{port}"
            assert dialed.early == b"early"
            assert failed == [f"http://127.0.0.1:{dead}"]
        finally:
            dialed.sock.close()
            thread.join(5)
