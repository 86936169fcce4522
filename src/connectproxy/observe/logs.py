"""Logging: the server's own events (stderr) and the access log (one event per connection).

The access log is written through a buffer flushed about once a second and at close, not per line:
at thousands of tunnels a second a write system call per line would cost more than the tunnel.
Nothing here ever receives a password or a Proxy-Authorization value; the access record has no
field that could hold one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, TextIO

import structlog

from connectproxy.config.model import Log
from connectproxy.outcome import Outcome
from connectproxy.policy.tlsguard import HelloSeen

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(log: Log, stream: TextIO | None = None) -> None:
    """Configure structlog for lifecycle events; called at start and on reload."""
    renderer: structlog.types.Processor
    if log.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(log.level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    return structlog.get_logger("connectproxy")


# `init=False` and an __init__ of our own: compiled (setup.py), a dataclass's generated
# __init__ stays interpreted, and a record is made for every connection. The fields and their
# defaults are declared twice; the dataclass still gives equality, repr and `replace`.
@dataclass(slots=True, init=False)
class AccessRecord:
    """Every field of one client connection's access-log line (docs/operations.md, "Access
    log"). `None` becomes JSON null."""

    start: float  # wall-clock time the connection was accepted
    client_addr: str
    client_port: int
    client: str | None
    user: str | None
    target: str | None
    outcome: Outcome | None
    status: int | None
    upstream: str | None
    server_addr: str | None
    bytes_client_to_server: int
    bytes_server_to_client: int
    duration_s: float | None
    connect_s: float | None
    error: str | None
    policy: str | None  # the deciding policy; None before the destination step
    would_deny: bool | None  # set when the deciding policy is in report mode
    listener: str | None
    # What the TLS guard saw of the ClientHello (SPEC 5.1); None where no guard ran. One field,
    # not four: a connection without the guard pays for one assignment.
    hello: HelloSeen | None

    def __init__(
        self,
        start: float,
        client_addr: str,
        client_port: int,
        client: str | None = None,
        user: str | None = None,
        target: str | None = None,
        outcome: Outcome | None = None,
        status: int | None = None,
        upstream: str | None = None,
        server_addr: str | None = None,
        bytes_client_to_server: int = 0,
        bytes_server_to_client: int = 0,
        duration_s: float | None = None,
        connect_s: float | None = None,
        error: str | None = None,
        policy: str | None = None,
        would_deny: bool | None = None,
        listener: str | None = None,
        hello: HelloSeen | None = None,
    ) -> None:
        self.start = start
        self.client_addr = client_addr
        self.client_port = client_port
        self.client = client
        self.user = user
        self.target = target
        self.outcome = outcome
        self.status = status
        self.upstream = upstream
        self.server_addr = server_addr
        self.bytes_client_to_server = bytes_client_to_server
        self.bytes_server_to_client = bytes_server_to_client
        self.duration_s = duration_s
        self.connect_s = connect_s
        self.error = error
        self.policy = policy
        self.would_deny = would_deny
        self.listener = listener
        self.hello = hello


class _Timestamps:
    """RFC 3339 UTC with milliseconds. Thousands of lines a second share a handful of seconds,
    so the date-and-time part is formatted once per second and reused."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((ts - second) * 1000):03d}Z"


def _text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _number(value: int | float | None) -> str:
    # `int | float`, not PEP 484's `float` that admits ints: compiled, a `float` parameter turns
    # an int into a float, and a status of 200 would be written as 200.0.
    return "null" if value is None else repr(value)


def access_json(rec: AccessRecord, report_mode: bool, ts: str, tls_guard: bool = False) -> str:
    """One access line as compact JSON, written out field by field.

    `report_mode` is whether any policy of the config is in report mode: then every line carries
    `would_deny`, `true` only where a report-mode policy let through what it would refuse.
    `tls_guard` is whether any policy has a TLS guard (`tls` other than `off`): then every line
    carries `sni`, `tls_version`, `alpn` and `ja4`, null where the guard saw none or did not run,
    so a log has one shape whichever policy decided each line.

    The same bytes as `json.dumps(..., separators=(",", ":"))` of the fields in this order (the
    tests compare the two), at about half the cost: no dictionary is built, and each string goes
    straight to the JSON module's own C escaping function. Every field is a str, int, finite
    float, bool or None, so nothing else needs encoding."""
    would_deny = (
        (',"would_deny":true' if rec.would_deny else ',"would_deny":false') if report_mode else ""
    )
    hello = ""
    if tls_guard:
        seen = rec.hello
        if seen is None:
            hello = ',"sni":null,"tls_version":null,"alpn":null,"ja4":null'
        else:
            hello = (
                f',"sni":{_text(seen.sni)},"tls_version":{_text(seen.tls_version)},'
                f'"alpn":{_text(seen.alpn)},"ja4":{_text(seen.ja4)}'
            )
    return (
        f'{{"ts":{_json_string(ts)},"client_addr":{_json_string(rec.client_addr)},'
        f'"client_port":{rec.client_port},"client":{_text(rec.client)},'
        f'"user":{_text(rec.user)},"target":{_text(rec.target)},'
        f'"outcome":{_text(rec.outcome)},"status":{_number(rec.status)},'
        f'"upstream":{_text(rec.upstream)},"server_addr":{_text(rec.server_addr)},'
        f'"bytes_client_to_server":{rec.bytes_client_to_server},'
        f'"bytes_server_to_client":{rec.bytes_server_to_client},'
        f'"duration_s":{_number(rec.duration_s)},"connect_s":{_number(rec.connect_s)},'
        f'"error":{_text(rec.error)},"policy":{_text(rec.policy)}{would_deny}{hello},'
        f'"event":"access"}}'
    )


def _squid_line(rec: AccessRecord) -> str:
    """Squid's native access.log format:
    time elapsed_ms client code/status bytes method url user hierarchy/peer type.

    Squid's fields are fixed and tools parse them by position, so the deciding policy,
    `would_deny` and what the TLS guard saw have no place here; they are in the JSON format. A
    tunnel the TLS guard closed was answered 200 and then refused: `TCP_DENIED/200`, so a count
    of TCP_DENIED lines still counts every refusal."""
    elapsed_ms = round((rec.duration_s or 0.0) * 1000)
    status = rec.status or 0
    outcome = rec.outcome
    code = (
        "TCP_TUNNEL"
        if outcome == "established"
        else (
            "TCP_DENIED"
            if status in (403, 407) or outcome == "tls_refused"
            else "NONE_NONE"
            if status == 0
            else "TCP_MISS"
        )
    )
    if rec.upstream:
        hier = f"FIRST_UP_PARENT/{rec.upstream.split('://', 1)[-1].rsplit(':', 1)[0].strip('[]')}"
    elif rec.server_addr:
        hier = f"HIER_DIRECT/{rec.server_addr.rsplit(':', 1)[0].strip('[]')}"
    else:
        hier = "HIER_NONE/-"
    url = rec.target or "error:invalid-request"
    method = "CONNECT" if rec.target else "NONE"
    return (
        f"{rec.start:.3f} {elapsed_ms:6d} {rec.client_addr} {code}/{status:03d} "
        f"{rec.bytes_server_to_client} {method} {url} {rec.user or '-'} {hier} -"
    )


REFUSALS_KEPT = 1000  # the admin API's `GET /api/denials`


class AccessLog:
    """Buffered writer of access records to stdout ("-") or a file.

    `reopen` lets log rotation work: after logrotate moves the file away, SIGHUP makes us write to
    a fresh file at the configured path.

    `refusals` keeps the last `REFUSALS_KEPT` records of every outcome but `established`, oldest
    first, for the admin API: a bounded ring, so a flood of refusals costs a fixed amount of
    memory, and the one place every record passes through, so none is missed."""

    def __init__(self, log: Log, report_mode: bool = False, tls_guard: bool = False) -> None:
        self.path = log.access_log
        self.squid = log.access_format == "squid"
        self.report_mode = report_mode
        self.refusals: deque[AccessRecord] = deque(maxlen=REFUSALS_KEPT)
        # Told of every refusal as it is written: the status page's counts of the last hour,
        # which must see each one, not only the last thousand.
        self.on_refusal: Callable[[AccessRecord], None] | None = None
        self.tls_guard = tls_guard
        self._lines: list[str] = []
        self._file: TextIO = self._open(self.path)
        self._timestamp = _Timestamps()

    def _append(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 512:
            self.flush()

    def _open(self, path: str) -> TextIO:
        if path == "-":
            return sys.stdout
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, rec: AccessRecord) -> None:
        if rec.outcome != "established":
            self.refusals.append(rec)
            if self.on_refusal is not None:
                self.on_refusal(rec)
        if self.squid:
            self._append(_squid_line(rec))
        else:
            # Not through structlog's processor chain: per line, that cost more than the rest
            # of a tunnel's bookkeeping. One compact JSON object per line (test_logs.py).
            ts = self._timestamp(rec.start)
            self._append(access_json(rec, self.report_mode, ts, self.tls_guard))

    def refusals_json(self) -> str:
        """The kept refusals as a JSON array, newest first, each object exactly its JSON
        access-log line."""
        stamp = _Timestamps()
        lines = [
            access_json(rec, self.report_mode, stamp(rec.start), self.tls_guard)
            for rec in self.refusals
        ]
        lines.reverse()
        return "[" + ",".join(lines) + "]"

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:
            get_logger().error("access log write failed", error=str(exc), path=self.path)

    def reopen(self, log: Log | None = None) -> None:
        """On a reload: the file is opened afresh at its path, which is what logrotate needs
        after renaming it, and `log` (the new config's) may move it or change its format, as
        Squid applies `access_log` on reconfigure. OSError if the new file cannot be opened:
        the old one is then still in use, unchanged."""
        self.flush()
        path = self.path if log is None else log.access_log
        fresh = self._open(path)  # standard output is the same object again
        old, self._file, self.path = self._file, fresh, path
        if log is not None:
            self.squid = log.access_format == "squid"
        if old is not fresh and old is not sys.stdout:
            old.close()

    def close(self) -> None:
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()
