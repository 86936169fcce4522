"""The sections about running rather than policy: `timeouts`, `limits`, `metrics` and `log`.

`metrics.listen: null` is the one null that does not mean "take the default": it is how metrics
are turned off, so `metrics` tells an absent key from a null one.
"""

from __future__ import annotations

from typing import Any

from connectproxy.config.model import AccessFormat, Limits, Log, LogFormat, Metrics, Timeouts
from connectproxy.configfile.checker import Checker, Section
from connectproxy.configfile.errors import Where
from connectproxy.configfile.files import log_file
from connectproxy.configfile.netvalues import address
from connectproxy.configfile.scalars import choice, duration, integer, string

__all__ = ["limits", "log", "metrics", "timeouts"]

_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
_ACCESS_FORMATS: tuple[AccessFormat, ...] = ("json", "squid")


def timeouts(check: Checker, value: Any, where: Where) -> Timeouts:
    keys = ("handshake", "connect", "idle", "shutdown_grace")
    section = Section(check, value, where, keys)
    default = Timeouts()
    return Timeouts(
        handshake=section.get_or("handshake", duration, default.handshake),
        connect=section.get_or("connect", duration, default.connect),
        idle=section.get_or("idle", duration, default.idle),
        shutdown_grace=section.get_or("shutdown_grace", duration, default.shutdown_grace),
    )


def limits(check: Checker, value: Any, where: Where) -> Limits:
    keys = ("max_connections", "max_connections_per_source", "max_request_bytes")
    section = Section(check, value, where, keys)
    default = Limits()
    return Limits(
        max_connections=section.get_or("max_connections", _positive_int, default.max_connections),
        max_connections_per_source=section.get_or(
            "max_connections_per_source", _positive_int, default.max_connections_per_source
        ),
        max_request_bytes=section.get_or(
            "max_request_bytes", _request_bytes, default.max_request_bytes
        ),
    )


def _positive_int(check: Checker, value: Any, where: Where) -> int:
    return integer(check, value, where, low=1)


def _request_bytes(check: Checker, value: Any, where: Where) -> int:
    # Below 1 KiB a sensor's ordinary CONNECT with a few headers no longer fits; above
    # 64 KiB the limit stops protecting memory.
    return integer(check, value, where, low=1024, high=65536)


def metrics(check: Checker, value: Any, where: Where) -> tuple[Metrics, Where | None]:
    """The metrics endpoint, and where its address was written (None if it took the default),
    for the message when it clashes with a listener."""
    section = Section(check, value, where, ("listen",))
    if not section.has("listen"):
        return Metrics(), None
    item = section.get("listen")
    if item is None:  # `listen: null` is how metrics are turned off
        return Metrics(None, None), None
    host, port = address(check, *item)
    return Metrics(host, port), item[1]


def log(check: Checker, value: Any, where: Where) -> Log:
    section = Section(check, value, where, ("level", "format", "access_log", "access_format"))
    default = Log()
    return Log(
        level=section.get_or("level", _log_level, default.level),
        format=section.get_or("format", _log_format, default.format),
        access_log=section.get_or("access_log", _access_log, default.access_log),
        access_format=section.get_or("access_format", _access_format, default.access_format),
    )


def _log_level(check: Checker, value: Any, where: Where) -> str:
    return choice(check, value, where, _LOG_LEVELS)


def _log_format(check: Checker, value: Any, where: Where) -> LogFormat:
    return choice(check, value, where, _LOG_FORMATS)


def _access_format(check: Checker, value: Any, where: Where) -> AccessFormat:
    return choice(check, value, where, _ACCESS_FORMATS)


def _access_log(check: Checker, value: Any, where: Where) -> str:
    text = string(check, value, where)
    if text == "-":
        return text
    if not text:
        raise check.error(where, 'must be "-" (standard output) or a file path')
    return log_file(check, text, where)
