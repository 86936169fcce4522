"""Keep the event loop polling for a moment after connection work, instead of going to sleep.

Why: when the proxy's core has nothing to do, the loop blocks in `epoll_wait` and the core
halts. Waking it for the next packet takes tens of microseconds, longer on a virtual machine,
where the host has to reschedule the halted vCPU. On the build machine that wake was 40-50 µs of
a 125 µs CONNECT→200 with one client at a time.

Setting up tunnels comes in quick turns: the CONNECT follows the accept, the client's first
bytes follow the 200, and a client that has closed a tunnel may open the next at once. So after
an accept, a 200 or an end of stream, the loop polls without blocking for a short window before
it may sleep.

Polling only pays when the next connection step comes soon; for clients a network round trip
away it is waste. So the window adapts, as the guest kernel's halt-polling does, to the one
event that starts the work: at each accept it doubles if polling caught the connection or would
have with the longest window, and halves, down to no polling at all, if the loop would have
slept longer than that anyway. The bytes of an established tunnel never start polling, and an
idle proxy never polls. Each turn of polling yields the core to any other process that is
ready to run on it, so polling uses only time the core would otherwise spend idle (with two
workers sharing two cores with their clients, not yielding cost 5% of the tunnel rate).
"""

from __future__ import annotations

import asyncio
import os
import time

# The longest window: long enough to bridge a peer's turnaround on loopback or in a host, its
# own wake-up included. An accept that comes later than this after the window shrinks it.
MAX_WINDOW_NS = 100_000
# The first window after none, and the least one: halving below it stops polling.
MIN_WINDOW_NS = 25_000


class BusyPoll:
    """While a callback of ours is ready, the loop polls with a zero timeout; `_poll`
    re-schedules itself until `_until_ns`, the end of the window after the latest step."""

    __slots__ = ("_loop", "_polling", "_until_ns", "_window_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._window_ns = 0
        self._until_ns = 0
        self._polling = False

    @property
    def window_ns(self) -> int:
        return self._window_ns

    @property
    def polling(self) -> bool:
        return self._polling

    @property
    def until_ns(self) -> int:
        """When the latest window ends (or ended), on `time.monotonic_ns`'s clock."""
        return self._until_ns

    def arrived(self) -> None:
        """A connection came in: adapt the window to how long the loop waited for it, then
        poll for its request."""
        now = time.monotonic_ns()
        window = self._window_ns
        if self._polling or now - self._until_ns <= MAX_WINDOW_NS:
            window = min(MAX_WINDOW_NS, max(MIN_WINDOW_NS, window * 2))
        elif window // 2 >= MIN_WINDOW_NS:
            window //= 2
        else:
            window = 0
        self._window_ns = window
        self._extend(now)

    def expect(self) -> None:
        """A step after which a client's next one may follow at once: poll for it."""
        self._extend(time.monotonic_ns())

    def _extend(self, now: int) -> None:
        self._until_ns = now + self._window_ns
        if self._window_ns and not self._polling:
            self._polling = True
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        if time.monotonic_ns() < self._until_ns:
            os.sched_yield()  # a process waiting for this core gets it: polling fills idle time
            self._loop.call_soon(self._poll)
        else:
            self._polling = False
