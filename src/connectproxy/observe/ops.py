"""The operations listener: `/metrics`, `/healthz`, `/readyz`.

It runs on the same event loop as the proxy on purpose: if `/healthz` answers, the loop that
serves tunnels is responsive. `/readyz` is what a load balancer probes, so it turns 503 the moment
draining starts, before the proxy listeners close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_MAX_HEAD = 8192


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        render: Callable[[], bytes] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        self.render = render or (lambda: generate_latest(self.registry))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > _MAX_HEAD:
                raise ValueError("head too large")
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            method, path = (parts[0], parts[1].split(b"?", 1)[0]) if len(parts) == 3 else (b"", b"")
            status, ctype, body = self._route(method, path)
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n"
                % (status, _PHRASE.get(status, b"Error"), ctype, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ):
            pass
        finally:
            writer.close()

    def _route(self, method: bytes, path: bytes) -> tuple[int, bytes, bytes]:
        if method not in (b"GET", b"HEAD"):
            return 405, b"text/plain", b"method not allowed\n"
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST.encode(), self.render()
        if path == b"/healthz":
            return 200, b"text/plain", b"ok\n"
        if path == b"/readyz":
            if self.ready():
                return 200, b"text/plain", b"ready\n"
            return 503, b"text/plain", b"not ready\n"
        return 404, b"text/plain", b"not found\n"


_PHRASE = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}
