"""The last hour of refusals: counted in one-minute buckets on an injected clock, never more
rows than the cap however many names a client makes up."""

from __future__ import annotations

import pytest

from connectproxy.observe.refusals import OTHERS, RecentRefusals, RefusalCount, who_of


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_by_who_outcome_and_reason_most_first() -> None:
    clock = Clock()
    recent = RecentRefusals(clock=clock)
    for _ in range(3):
        recent.add("sensor1", "forbidden", "destination not allowed: not among default")
    recent.add("10.0.0.9", "auth_required", "proxy authentication required")
    recent.add("sensor1", "connect_failed", "connection refused")
    assert recent.counts() == [
        RefusalCount("sensor1", "forbidden", "destination not allowed: not among default", 3),
        RefusalCount("10.0.0.9", "auth_required", "proxy authentication required", 1),
        RefusalCount("sensor1", "connect_failed", "connection refused", 1),
    ]
    assert recent.total() == 5


def test_a_refusal_leaves_the_window_after_an_hour_in_whole_minutes() -> None:
    clock = Clock(0.0)
    recent = RecentRefusals(window=3600, bucket=60, clock=clock)
    recent.add("a", "forbidden", "r")  # bucket 0
    clock.now = 59.9
    recent.add("b", "forbidden", "r")  # still bucket 0
    clock.now = 60.0
    recent.add("c", "forbidden", "r")  # bucket 1
    clock.now = 3599.9  # bucket 59: bucket 0 is the oldest of the 60 kept
    assert {row.who for row in recent.counts()} == {"a", "b", "c"}
    clock.now = 3600.0  # bucket 60: bucket 0 has gone, bucket 1 stays
    assert {row.who for row in recent.counts()} == {"c"}
    clock.now = 3660.0
    assert recent.counts() == []
    assert recent.total() == 0


def test_a_quiet_hour_empties_every_bucket() -> None:
    clock = Clock(0.0)
    recent = RecentRefusals(clock=clock)
    for minute in range(60):
        clock.now = minute * 60.0
        recent.add("sensor", "forbidden", "r")
    assert recent.counts() == [RefusalCount("sensor", "forbidden", "r", 60)]
    clock.now += 7200
    assert recent.counts() == []


def test_made_up_names_are_capped_per_bucket_and_counted_together() -> None:
    clock = Clock(0.0)
    recent = RecentRefusals(max_keys=10, clock=clock)
    for i in range(1000):
        recent.add(f"user{i} from 10.0.0.1", "auth_failed", "invalid proxy credentials")
    rows = recent.counts()
    assert len(rows) == 11
    others = [row for row in rows if (row.who, row.outcome, row.reason) == OTHERS]
    assert others == [RefusalCount(*OTHERS, 990)]
    assert sum(row.count for row in rows) == 1000 == recent.total()
    # A name already counted in this bucket keeps its own row.
    recent.add("user0 from 10.0.0.1", "auth_failed", "invalid proxy credentials")
    assert RefusalCount("user0 from 10.0.0.1", "auth_failed", "invalid proxy credentials", 2) in (
        recent.counts()
    )


def test_memory_is_bounded_over_a_long_flood() -> None:
    clock = Clock(0.0)
    recent = RecentRefusals(window=600, bucket=60, max_keys=5, clock=clock)
    for i in range(20_000):
        clock.now = i * 0.5  # about 2.8 hours of two refusals a second, each a new name
        recent.add(f"n{i}", "auth_failed", "invalid proxy credentials")
        assert recent.held() <= 10 * 6  # ten one-minute buckets of at most 5 rows and OTHERS
    assert recent.total() == sum(row.count for row in recent.counts())


def test_window_must_hold_a_bucket() -> None:
    with pytest.raises(ValueError):
        RecentRefusals(window=10, bucket=60)
    with pytest.raises(ValueError):
        RecentRefusals(bucket=0)


@pytest.mark.parametrize(
    ("client", "user", "addr", "expected"),
    [
        ("sensor1", None, "10.0.0.1", "sensor1"),
        ("jump", "jump", "10.0.0.1", "jump"),  # admitted by credentials: client is the user
        (None, "<script>", "10.0.0.2", "<script> from 10.0.0.2"),  # a refused user name
        (None, None, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_who_a_refusal_is_filed_under(
    client: str | None, user: str | None, addr: str, expected: str
) -> None:
    assert who_of(client, user, addr) == expected
