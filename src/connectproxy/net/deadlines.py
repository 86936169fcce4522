"""Coarse deadlines for many connections on one shared timer.

Every connection set-up is bounded twice (the handshake timeout, then the connect timeout).
`asyncio.timeout` pays for each with a timer of its own in the event loop, created and then
cancelled, plus lookups of the running loop and task: several microseconds a connection, which at
thousands of connections a second is a visible part of the set-up cost. Those timeouts are seconds
long and nobody needs them to the millisecond, so here they all share one periodic tick: entering
a limit is a dictionary insert and leaving it a delete. A limit fires up to `TICK` late.

The behaviour on expiry is asyncio.timeout's: the task is cancelled, and the `with` block turns
that cancellation into TimeoutError. A cancellation from elsewhere (the drain at shutdown) stays a
CancelledError.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

TICK = 0.05  # seconds between checks, while any limit is running


class Deadlines:
    """All running limits of one event loop, checked every `TICK` seconds while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # One queue per limit length. Limits of the same length are added in time order, so each
        # queue's deadlines ascend (dicts keep insertion order) and a tick only reads the front.
        self._queues: dict[float, dict[Limit, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def limit(self, task: asyncio.Task[Any], seconds: float) -> Limit:
        """A context manager that cancels `task` (the caller) once `seconds` have passed."""
        return Limit(self, task, seconds)

    def _start(self, limit: Limit) -> None:
        queue = self._queues.get(limit.seconds)
        if queue is None:
            queue = self._queues[limit.seconds] = {}
        queue[limit] = self._loop.time() + limit.seconds
        if self._timer is None:
            self._timer = self._loop.call_later(TICK, self._tick)

    def _stop(self, limit: Limit) -> None:
        queue = self._queues.get(limit.seconds)
        if queue is not None:
            queue.pop(limit, None)

    def _tick(self) -> None:
        now = self._loop.time()
        for seconds, queue in list(self._queues.items()):
            expired = []
            for limit, deadline in queue.items():
                if deadline > now:
                    break
                expired.append(limit)
            for limit in expired:
                del queue[limit]
                limit.expire()
            if not queue:
                del self._queues[seconds]
        self._timer = self._loop.call_later(TICK, self._tick) if self._queues else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Limit:
    """`with deadlines.limit(task, 10):` around the awaits that must finish in time."""

    __slots__ = ("_cancelling", "_owner", "_task", "expired", "seconds")

    def __init__(self, owner: Deadlines, task: asyncio.Task[Any], seconds: float) -> None:
        self._owner = owner
        self._task = task
        self._cancelling = 0
        self.seconds = seconds
        self.expired = False

    def __enter__(self) -> Limit:
        self._cancelling = self._task.cancelling()
        self._owner._start(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.expired:
            self._owner._stop(self)
            return
        # Ours was one of the cancellations; only when no other one is pending does the block
        # end in a timeout rather than in the cancellation.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()
