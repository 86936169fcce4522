"""The awaitable socket helpers leave no exception behind while they wait.

Compiled by mypyc, a coroutine that waits inside an `except` block leaves that exception as the
one "being handled" for every other callback of the loop until it resumes: each exception raised
meanwhile gets it as `__context__` and walks its chain first. These tests run in both builds
(`make test` compiled, `make test-pure` plain) and fail on the compiled one if a wait moves back
into a handler.
"""

from __future__ import annotations

import ast
import asyncio
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme

from connectproxy.net import sockio
from tests.support import REPO_ROOT

ROOT = REPO_ROOT


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _nothing_handled_while_waiting(
    start: Callable[[], Coroutine[Any, Any, Any]], release: Callable[[], Awaitable[None] | None]
) -> Any:
    waiting = asyncio.ensure_future(start())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert sys.exc_info() == (None, None, None)
    try:
        raise ValueError("raised elsewhere while the helper waits")
    except ValueError as exc:
        assert exc.__context__ is None
    released = release()
    if released is not None:
        await released
    return await asyncio.wait_for(waiting, 5)


async def test_recv_waits_outside_its_exception_handler() -> None:
    a, b = _pair()
    with a, b:

        def send_late() -> None:
            b.send(b"late")

        data = await _nothing_handled_while_waiting(lambda: sockio.recv(a, 100), send_late)
        assert data == b"late"


async def test_send_all_waits_outside_its_exception_handler() -> None:
    a, b = _pair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = b"x" * (1 << 20)  # far more than both buffers hold

        async def drain() -> None:
            received = 0
            while received < len(payload):
                received += len(await sockio.recv(b, 1 << 16))

        await _nothing_handled_while_waiting(lambda: sockio.send_all(a, payload), drain)


async def test_handshake_waits_outside_its_exception_handler(ca: trustme.CA) -> None:
    a, b = _pair()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("proxy.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="proxy.test", do_handshake_on_connect=False)
    with server, client:
        await _nothing_handled_while_waiting(
            lambda: sockio.handshake(server), lambda: sockio.handshake(client)
        )
        assert server.version() is not None


def _compiled_modules() -> list[Path]:
    """The COMPILED list of setup.py, read without running setup.py."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            return [ROOT / name for name in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED list")


@pytest.mark.parametrize("module", _compiled_modules(), ids=lambda path: path.name)
def test_no_compiled_coroutine_waits_in_a_handler(module: Path) -> None:
    """The same rule for every compiled module, found by reading it: no `await` inside an
    `except` or `finally` block (a `with` block's exit is code the compiler writes: fine)."""
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        blocks: list[ast.stmt] = []
        if isinstance(node, ast.ExceptHandler):
            blocks = node.body
        elif isinstance(node, ast.Try):
            blocks = node.finalbody
        for statement in blocks:
            found += [n.lineno for n in ast.walk(statement) if isinstance(n, ast.Await)]
    assert not found, f"{module.name}: await inside except/finally at lines {found}"
