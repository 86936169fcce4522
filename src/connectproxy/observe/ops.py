"""The operations listener: `/metrics`, `/healthz`, `/readyz`, and whatever the layers above
plug in (the admin API, `server/admin.py`).

It runs on the same event loop as the proxy on purpose: if `/healthz` answers, the loop that
serves tunnels is responsive. `/readyz` is what a load balancer probes, so it turns 503 the moment
draining starts, before the proxy listeners close.

This module sits below the server (ARCHITECTURE.md), so it knows nothing of tunnels or tokens:
the server's admin routes reach it as one injected `Handler`, asked for every request the three
built-in paths do not answer. It parses just enough HTTP/1.1 for that: the request line, the
headers, and a body of a bounded size given by Content-Length. Every answer closes the
connection.

With `--workers N` each worker also runs one on a unix socket (`unix_path`) that only its
supervisor reaches, and the supervisor's routes gather the workers' answers from there; those
routes wait on the workers, so a handler may return an awaitable answer as well as an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connectproxy.observe.logs import get_logger

_MAX_HEAD = 8192
MAX_BODY = 16384  # an admin request's JSON body: a filter of a few short strings


@dataclass(frozen=True)
class OpsRequest:
    """One request to the operations listener. `headers` has lowercase names; a name sent twice
    keeps its last value. `path` is without the query string, which is in `query`."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class OpsResponse:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> OpsResponse:
        return OpsResponse(status, "text/plain; charset=utf-8", (message + "\n").encode(), headers)


# The routes of the layers above: an answer, or None for "not mine" (then 404); either may come
# as an awaitable, for a route that has to ask other processes first.
Handler = Callable[[OpsRequest], OpsResponse | Awaitable[OpsResponse | None] | None]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        render: Callable[[], bytes] | None = None,
        handler: Handler | None = None,
        unix_path: str | None = None,
    ) -> None:
        """`unix_path` serves on that unix socket (mode 0600) instead of `host` and `port`."""
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        self.render = render or (lambda: generate_latest(self.registry))
        self.handler = handler
        self.unix_path = unix_path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.unix_path is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)  # left by a worker that was killed
        self._server = await asyncio.start_unix_server(self._handle, self.unix_path)
        os.chmod(self.unix_path, 0o600)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            if self.unix_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.unix_path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > _MAX_HEAD:
                raise ValueError("head too large")
            try:
                request = await _read_request(reader, head)
                response = await self._route(request)
                method = request.method
            except _BadRequest as bad:
                response, method = OpsResponse.text(bad.status, bad.message), ""
            writer.write(_head(response))
            if method != "HEAD":
                writer.write(response.body)
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

    async def _route(self, request: OpsRequest) -> OpsResponse:
        builtin = request.path in ("/metrics", "/healthz", "/readyz")
        if builtin and request.method not in ("GET", "HEAD"):
            return OpsResponse.text(405, "method not allowed", (("Allow", "GET, HEAD"),))
        if request.path == "/metrics":
            return OpsResponse(200, CONTENT_TYPE_LATEST, self.render())
        if request.path == "/healthz":
            return OpsResponse.text(200, "ok")
        if request.path == "/readyz":
            if self.ready():
                return OpsResponse.text(200, "ready")
            return OpsResponse.text(503, "not ready")
        if self.handler is not None:
            try:
                result = self.handler(request)
                if result is None or isinstance(result, OpsResponse):
                    answer = result
                else:
                    answer = await result
            except Exception as exc:  # a bug in one route must not leave a request unanswered
                get_logger().error("ops request failed", path=request.path, error=repr(exc))
                return OpsResponse.text(500, "internal error")
            if answer is not None:
                return answer
        return OpsResponse.text(404, "not found")


async def _read_request(reader: asyncio.StreamReader, head: bytes) -> OpsRequest:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target = parts[0], parts[1]
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "send the body with a Content-Length")
    body = b""
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise _BadRequest(400, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            raise _BadRequest(413, f"request body larger than {MAX_BODY} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    return OpsRequest(method, path, query, headers, body)


def _head(response: OpsResponse) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    phrase = _PHRASE.get(response.status, "Error")
    return (
        f"HTTP/1.1 {response.status} {phrase}\r\nContent-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")


_PHRASE = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
