"""The admin API of a `--workers N` proxy (SPEC section 7.1): the supervisor answers on the
metrics listener by asking every worker.

The supervisor holds no tunnels; each worker holds its own, its own refusals and its own figures
for the status page. So each worker serves its admin routes on a unix socket in the supervisor's
private directory (mode 0700, the one prometheus-client's multiprocess files live in), and the
supervisor's routes, behind the same token check as a single process's, forward each request
to every live worker at once and put the answers together:

- `GET /api/tunnels`: the workers' lists, one after the other. Tunnel ids are unique across
  workers because each worker numbers its tunnels from its own base (`ID_SPACE` apart).
- `POST /api/tunnels/close`: the filter goes to every worker; `closed` is the sum.
- `GET /api/denials`: the refusals of all workers, newest first, the last `MAX_DENIALS`.
- `GET /status`: every worker's snapshot (`SNAPSHOT_PATH`), summed and rendered once.

The client's Authorization header is passed on, and each worker checks it against its own
config, so the sockets serve nothing without the token even to a process that could reach them.

A worker that does not answer within `ASK_TIMEOUT` (stopped, busy, just restarted) is left
out rather than waited for: every answer carries `X-Connectproxy-Workers: ANSWERED/TOTAL`, and
the status page says how many answered. An answer other than 200 from any worker (a filter it
refuses, say) is passed on as it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectproxy.observe.ops import OpsRequest, OpsResponse
from connectproxy.observe.statusmerge import merge, snapshot_from_json
from connectproxy.observe.statuspage import CONTENT_TYPE, HEADERS, StatusSnapshot, render
from connectproxy.server.admin import AdminRoutes, json_error, json_response

__all__ = [
    "ASK_TIMEOUT",
    "ID_SPACE",
    "MAX_DENIALS",
    "SNAPSHOT_PATH",
    "WORKERS_HEADER",
    "AdminFanout",
    "WorkerAnswer",
    "ask_worker",
]

ASK_TIMEOUT = 3.0  # seconds a worker gets to answer one admin request
# Tunnel ids of the worker started n-th are n * ID_SPACE + 1, + 2, ...: a worker would need a
# thousand tunnels a second for thirty years to reach the next one's, and ids stay below 2**53
# (exact in JSON numbers) for the first nine thousand workers a supervisor starts.
ID_SPACE = 10**12
MAX_DENIALS = 1000
SNAPSHOT_PATH = "/worker/status"  # a worker's status page figures as JSON; served on its socket
WORKERS_HEADER = "X-Connectproxy-Workers"
_MAX_ANSWER = 256 * 1024 * 1024  # a listing of ~1M tunnels; anything longer is not an answer


@dataclass(frozen=True)
class WorkerAnswer:
    status: int
    content_type: str
    body: bytes


async def ask_worker(socket_path: str, path: str, request: OpsRequest) -> WorkerAnswer | None:
    """`request` sent to `path` on one worker's socket; None when it cannot be asked or its
    answer is not HTTP. The caller bounds the time."""
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        return None
    try:
        target = path + ("?" + request.query if request.query else "")
        # A HEAD is answered from the workers' whole answers, so ask them with GET.
        method = "GET" if request.method == "HEAD" else request.method
        head = [f"{method} {target} HTTP/1.1", "Host: worker", "Connection: close"]
        authorization = request.headers.get("authorization")
        if authorization is not None:
            head.append(f"Authorization: {authorization}")
        if request.body or request.method == "POST":
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(request.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body)
        await writer.drain()
        chunks: list[bytes] = []
        size = 0
        while chunk := await reader.read(65536):  # the worker closes after its answer
            size += len(chunk)
            if size > _MAX_ANSWER:
                return None
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError:
        return None
    finally:
        writer.close()
    return _parse_answer(data)


def _parse_answer(data: bytes) -> WorkerAnswer | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    content_type = "application/octet-stream"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    return WorkerAnswer(int(parts[1]), content_type, body)


class AdminFanout:
    """The supervisor's admin routes: each asks every worker socket `sockets()` lists, out of
    `total()` workers there should be. `own()` is the supervisor's part of the status page."""

    def __init__(
        self,
        sockets: Callable[[], Sequence[str]],
        total: Callable[[], int],
        own: Callable[[], StatusSnapshot],
        timeout: float = ASK_TIMEOUT,
    ) -> None:
        self.sockets = sockets
        self.total = total
        self.own = own
        self.timeout = timeout

    def install(self, routes: AdminRoutes) -> None:
        routes.add("GET", "/api/tunnels", self.list_tunnels)
        routes.add("POST", "/api/tunnels/close", self.close_tunnels)
        routes.add("GET", "/api/denials", self.denials)
        routes.add("GET", "/status", self.status)

    async def gather(self, path: str, request: OpsRequest) -> list[WorkerAnswer]:
        """The answers of the workers that answered in time, in the order of `sockets()`."""
        sockets = list(self.sockets())
        if not sockets:
            return []

        async def one(socket_path: str) -> WorkerAnswer | None:
            try:
                return await asyncio.wait_for(ask_worker(socket_path, path, request), self.timeout)
            except TimeoutError:
                return None

        answers = await asyncio.gather(*(one(socket_path) for socket_path in sockets))
        return [answer for answer in answers if answer is not None]

    def _header(self, answered: int) -> tuple[str, str]:
        return (WORKERS_HEADER, f"{answered}/{self.total()}")

    async def _all_ok(
        self, path: str, request: OpsRequest
    ) -> tuple[list[WorkerAnswer], OpsResponse | None]:
        """The answers, or the response to give instead: no worker answered, or one refused."""
        answers = await self.gather(path, request)
        header = self._header(len(answers))
        if not answers:
            message = f"no worker answered within {self.timeout:g} s"
            return answers, json_error(503, message, (header,))
        for answer in answers:
            if answer.status != 200:
                return answers, OpsResponse(
                    answer.status, answer.content_type, answer.body, (header,)
                )
        return answers, None

    async def list_tunnels(self, request: OpsRequest) -> OpsResponse:
        answers, failed = await self._all_ok("/api/tunnels", request)
        if failed is not None:
            return failed
        # Each body is a JSON array; splicing them saves parsing thousands of rows.
        rows: list[bytes] = []
        for answer in answers:
            inner = _array_items(answer.body)
            if inner is None:
                return json_error(502, "a worker's answer is not a JSON array")
            if inner:
                rows.append(inner)
        body = b"[" + b",".join(rows) + b"]"
        return OpsResponse(200, "application/json", body, (self._header(len(answers)),))

    async def close_tunnels(self, request: OpsRequest) -> OpsResponse:
        answers, failed = await self._all_ok("/api/tunnels/close", request)
        if failed is not None:
            return failed
        closed = 0
        for answer in answers:
            try:
                closed += int(json.loads(answer.body)["closed"])
            except (ValueError, KeyError, TypeError):
                return json_error(502, "a worker's answer has no count of closed tunnels")
        summed = json_response(200, {"closed": closed})
        return OpsResponse(
            summed.status, summed.content_type, summed.body, (self._header(len(answers)),)
        )

    async def denials(self, request: OpsRequest) -> OpsResponse:
        answers, failed = await self._all_ok("/api/denials", request)
        if failed is not None:
            return failed
        records: list[object] = []
        for answer in answers:
            try:
                part = json.loads(answer.body)
            except ValueError:
                part = None
            if not isinstance(part, list):
                return json_error(502, "a worker's answer is not a JSON array")
            records.extend(part)
        # `ts` is RFC 3339 UTC with milliseconds, one width for all: its text sorts as its time.
        records.sort(key=_ts, reverse=True)
        body = json.dumps(records[:MAX_DENIALS]).encode()
        return OpsResponse(200, "application/json", body, (self._header(len(answers)),))

    async def status(self, request: OpsRequest) -> OpsResponse:
        answers = await self.gather(SNAPSHOT_PATH, request)
        parts: list[StatusSnapshot] = []
        for answer in answers:
            if answer.status != 200:
                continue
            try:
                parts.append(snapshot_from_json(answer.body))
            except (ValueError, KeyError, TypeError):
                continue
        snap = merge(self.own(), parts, self.total())
        headers = (*HEADERS, self._header(len(parts)))
        return OpsResponse(200, CONTENT_TYPE, render(snap), headers)


def _array_items(body: bytes) -> bytes | None:
    """The text between the brackets of a JSON array (b"" for an empty one); None when the
    body is not bracketed."""
    text = body.strip()
    if len(text) < 2 or text[:1] != b"[" or text[-1:] != b"]":
        return None
    return text[1:-1].strip()


def _ts(record: object) -> str:
    if isinstance(record, dict):
        value = record.get("ts")
        if isinstance(value, str):
            return value
    return ""
