"""The connection limits: a decision with its own outcome, taken before a request is read.

`limits.max_connections` (clamped to what the descriptor limit allows) and
`limits.max_connections_per_source` refuse with 503 and outcome `overloaded` without reading a
request (docs/configuration.md, "limits"). On a TLS listener no HTTP answer is possible before
the handshake, so the refusal there is a close.
"""

from __future__ import annotations

from connectproxy.outcome import Refusal

TOO_MANY = "too many connections"
TOO_MANY_FROM_SOURCE = "too many connections from this source"


def overloaded(reason: str, answer: bool) -> Refusal:
    """The refusal for a limit: a 503 where the client can read HTTP, else a silent close."""
    return Refusal(503 if answer else None, "overloaded", reason)


class SourceCounts:
    """Open connections per source address, keyed by the packed address: bytes hash in C, once;
    an ipaddress object hashes in Python."""

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}

    def take(self, source: bytes, limit: int) -> bool:
        """Count one more connection from `source`, unless it already has `limit`."""
        open_now = self.counts.get(source, 0)
        if open_now >= limit:
            return False
        self.counts[source] = open_now + 1
        return True

    def release(self, source: bytes) -> None:
        left = self.counts[source] - 1
        if left:
            self.counts[source] = left
        else:
            del self.counts[source]
