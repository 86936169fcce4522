"""Shared fixtures: a test CA, origin servers, and connectproxy processes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

import connectproxy
from tests.support import HTTPSOrigin, OriginServer, ProxyProcess, write_leaf


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which build the suite ran on, in the summary that `make test`'s -q still prints."""
    build = "compiled by setup.py" if connectproxy.compiled() else "plain Python"
    terminalreporter.write_line(f"connectproxy build tested: {build}")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture()
def origin() -> Iterator[OriginServer]:
    with OriginServer() as server:
        yield server


@pytest.fixture()
def https_origin(ca: trustme.CA) -> Iterator[HTTPSOrigin]:
    cert = ca.issue_cert("sensor.azure-devices.net", "download.microsoft.com", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    with HTTPSOrigin(ctx) as server:
        yield server


@pytest.fixture()
def server_cert(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    """The certificate of a proxy's TLS listener on 127.0.0.1 (an IP SAN)."""
    return write_leaf(ca, tmp_path, "proxy-server", "127.0.0.1")


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture()
def make_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start connectproxy processes on configs; every one is stopped (by PID) at teardown."""
    started: list[ProxyProcess] = []
    count = 0

    def factory(config: dict[str, Any], start: bool = True, **kw: Any) -> ProxyProcess:
        nonlocal count
        count += 1
        workdir = tmp_path / f"proxy{count}"
        workdir.mkdir()
        proxy = ProxyProcess(config, workdir, **kw)
        started.append(proxy)
        return proxy.start() if start else proxy

    yield factory
    for proxy in started:
        proxy.stop()


def pytest_asyncio_loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process async tests run on uvloop, the loop the server runs on."""
    return {"uvloop": uvloop.new_event_loop}
