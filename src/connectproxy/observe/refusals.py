"""Refusals of the last hour by client and reason, for the status page (docs/operations.md,
"The status page").

The access log has every refusal, but a person looking at `/status` wants the shape of the last
hour at a glance: which sensor is being refused, and why. Counting them here instead of scanning
a log keeps the page cheap to render every five seconds, and keeps memory bounded however many
refusals arrive: the hour is cut into one-minute buckets, a bucket keeps at most `max_keys`
distinct (who, outcome, reason) rows and counts the rest together, and a bucket older than the
window is dropped whole. Refused requests are exactly the ones an attacker controls (any user
name a client sends is counted under that name), so the cap is what stops a flood of made-up
names from growing the table.

Pure: time comes from the injected clock, nothing here touches the loop or a socket.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 3600.0  # seconds of refusals the page shows
BUCKET = 60.0  # seconds per bucket: the window moves on in steps of this
MAX_KEYS = 256  # distinct rows one bucket keeps before it counts the rest as OTHERS
OTHERS = ("(others)", "-", "more distinct sources in one minute than the page keeps")


@dataclass(frozen=True)
class RefusalCount:
    """One row of the page's refusal table."""

    who: str  # the admitted client's name, else the user name tried, else the source address
    outcome: str
    reason: str
    count: int


def who_of(client: str | None, user: str | None, client_addr: str) -> str:
    """The name a refusal is filed under. An admitted identity refused a destination is its
    client name; a refused user name (wrong password, or not from its networks) is shown with
    the address it came from, since the name alone is whatever the client typed; a client that
    sent no credentials is its address."""
    if client:
        return client
    if user:
        return f"{user} from {client_addr}"
    return client_addr


Key = tuple[str, str, str]


class RecentRefusals:
    """Counts of refusals in the last `window` seconds, by (who, outcome, reason).

    Memory: at most window/bucket buckets of at most `max_keys` + 1 rows each."""

    def __init__(
        self,
        window: float = WINDOW,
        bucket: float = BUCKET,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bucket <= 0 or window < bucket:
            raise ValueError("need 0 < bucket <= window")
        self.window = window
        self.bucket = bucket
        self.max_keys = max_keys
        self.clock = clock
        self.buckets_kept = int(window // bucket)
        self._buckets: deque[tuple[int, dict[Key, int]]] = deque()

    def add(self, who: str, outcome: str, reason: str) -> None:
        """One refusal, now."""
        index = self._expire()
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append((index, {}))
        counts = self._buckets[-1][1]
        key = (who, outcome, reason)
        if key not in counts and len(counts) >= self.max_keys:
            key = OTHERS
        counts[key] = counts.get(key, 0) + 1

    def counts(self) -> list[RefusalCount]:
        """The rows of the window, most refused first (then by name, for a stable page)."""
        self._expire()
        total: dict[Key, int] = {}
        for _, counts in self._buckets:
            for key, n in counts.items():
                total[key] = total.get(key, 0) + n
        rows = [
            RefusalCount(who, outcome, reason, n) for (who, outcome, reason), n in total.items()
        ]
        rows.sort(key=lambda row: (-row.count, row.who, row.outcome, row.reason))
        return rows

    def total(self) -> int:
        self._expire()
        return sum(n for _, counts in self._buckets for n in counts.values())

    def held(self) -> int:
        """Rows kept in memory, over every bucket (the bound the tests check)."""
        return sum(len(counts) for _, counts in self._buckets)

    def _expire(self) -> int:
        """Drop buckets that have left the window; the current bucket's index."""
        index = int(self.clock() // self.bucket)
        oldest = index - self.buckets_kept + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
        return index
