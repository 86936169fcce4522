"""Helpers of the deployment tests, and the figures they measure.

Image build times, the scale-out load generator's counts per phase and the systemd-analyze
security score are what the README quotes; printing them with the test summary keeps each CI
log the record of the figures of that run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIGURES: dict[str, str] = {}


def record(name: str, value: str) -> None:
    FIGURES[name] = value


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll until condition() is truthy; return its value, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment_without_proxy() -> dict[str, str]:
    """Children must reach loopback directly, whatever proxy the machine's environment names."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
