"""How a client connection ended: one `Outcome` type and one error base for every refusal.

The outcome is the `outcome` label of `connectproxy_requests_total` and the access log's
`outcome` field (docs/operations.md, "Metrics"). It is a `Literal`, so mypy checks every use where
it is written: a misspelt outcome fails the type check instead of creating a new metric series at
run time, and it costs nothing on the connection path (plain strings).
"""

from __future__ import annotations

from typing import Literal, get_args

Outcome = Literal[
    "established",
    "bad_request",
    "method_not_allowed",
    "auth_required",
    "auth_failed",
    "forbidden",
    "resolve_failed",
    "connect_failed",
    "connect_timeout",
    "upstream_refused",
    "overloaded",
    "handshake_timeout",
    "tls_refused",
]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


class Refusal(Exception):
    """A connection that ends without a tunnel, and how to say so.

    `status` is the HTTP status to answer with, or None where no HTTP answer is possible (the
    client is gone, the PROXY header was bad, the TLS handshake failed). The flow catches this one
    type wherever a step refuses (server/connection.py)."""

    def __init__(self, status: int | None, outcome: Outcome, reason: str) -> None:
        # Subclasses set `args` to their own constructor's arguments, so every one pickles whole.
        super().__init__(status, outcome, reason)
        self.status = status
        self.outcome: Outcome = outcome
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
