"""A small sd_notify client: tell systemd we are ready, reloading, stopping, and still alive.

The protocol is one datagram of `KEY=value` lines sent to the unix socket named by
`NOTIFY_SOCKET` (see sd_notify(3)); it is simple enough that a dependency (python-systemd, or
libsystemd through ctypes, which would also clash with `MemoryDenyWriteExecute=`) buys nothing.

Two rules shape this module:
- A broken notify socket must never take the proxy down, so every send swallows `OSError`
  and logs the first failure only (a watchdog ping every few seconds must not flood the log).
- Outside systemd (a container, a terminal, the tests) `NOTIFY_SOCKET` is unset and every
  method is a no-op, so callers never need to ask whether they run under systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

from connectproxy.observe.logs import get_logger

# A Linux sockaddr_un holds 108 bytes of path; longer names cannot be addressed.
_MAX_UNIX_PATH = 108


def _socket_address(value: str) -> str | None:
    """`NOTIFY_SOCKET` as a `sendto` address; `None` for forms we cannot use.

    "@name" is a Linux abstract socket: its address starts with a NUL byte instead of "@".
    Newer systemd also knows "vsock:…" addresses (for virtual machines); a proxy runs on the
    host, so those are treated as "no notify socket" rather than guessed at.
    """
    if value.startswith("@") and len(value) > 1:
        address = "\0" + value[1:]
    elif value.startswith("/"):
        address = value
    else:
        return None
    return address if len(address.encode()) <= _MAX_UNIX_PATH else None


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for; a child that merely
    inherited the environment must not ping on its parent's behalf.
    """
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """A newline inside STATUS= would start a new assignment (say, a forged READY=1)."""
    return " ".join(text.splitlines())


class Notifier:
    """Talks to the service manager on behalf of this process; silent when not under systemd."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._log = get_logger()
        self._failed = False
        self._sock: socket.socket | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        self._name = raw  # as written, for messages: an abstract address starts with NUL
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            self._log.warning(
                "NOTIFY_SOCKET is not a usable unix socket; not notifying", notify_socket=raw
            )
        if self._address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as exc:
                self._failure(exc)
        self.enabled: bool = self._sock is not None
        self.watchdog_interval: float | None = (
            _watchdog_interval(env, os.getpid()) if self.enabled else None
        )

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete (listening), or a reload announced by `reloading()` is over."""
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def reloading(self) -> None:
        """A reload begins; systemd shows "reloading" until the next `ready()`.

        MONOTONIC_USEC lets systemd (v253+) match this message to the reload it requested.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping until cancelled; returns at once when systemd asked for no watchdog.

        Run it as a task on the proxy's own event loop: a ping then proves that the loop serving
        tunnels still turns, which is what a watchdog restart should be about.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.enabled = False
        self.watchdog_interval = None

    def _send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            self._failure(exc)

    def _failure(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            self._log.warning(
                "cannot notify systemd; carrying on without it",
                error=str(exc),
                notify_socket=self._name,
            )
