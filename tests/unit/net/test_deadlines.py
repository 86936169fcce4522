"""The shared-tick deadlines that bound connection set-up (handshake and connect timeouts)."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectproxy.net.deadlines import TICK, Deadlines, Limit


def current() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def test_an_overrun_becomes_timeout_error_about_on_time() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    began = time.monotonic()
    with pytest.raises(TimeoutError), deadlines.limit(current(), 0.2):
        await asyncio.sleep(5)
    took = time.monotonic() - began
    assert 0.19 <= took < 0.2 + TICK + 0.15
    assert current().cancelling() == 0  # the cancellation was ours and is withdrawn
    deadlines.close()


async def test_a_block_that_finishes_in_time_leaves_nothing_behind() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    for _ in range(100):
        with deadlines.limit(current(), 0.5):
            await asyncio.sleep(0)
    assert all(not queue for queue in deadlines._queues.values())
    await asyncio.sleep(TICK * 3)
    assert deadlines._queues == {} and deadlines._timer is None  # the tick stops when idle
    await asyncio.sleep(0.6)  # past every deadline: nothing fires late
    deadlines.close()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    entered = asyncio.Event()

    async def body() -> None:
        with deadlines.limit(current(), 5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(not q for q in deadlines._queues.values())
    deadlines.close()


async def test_expiry_and_an_outside_cancellation_together_stay_a_cancellation() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    entered = asyncio.Event()
    limits: list[Limit] = []

    async def body() -> None:
        with deadlines.limit(current(), 5) as limit:
            limits.append(limit)
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await entered.wait()
    limits[0].expire()  # the deadline fires...
    task.cancel()  # ...and shutdown cancels too, before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_limits_of_different_lengths_each_fire_on_time() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    finished: dict[str, float] = {}
    began = time.monotonic()

    async def bounded(name: str, seconds: float) -> None:
        try:
            with deadlines.limit(current(), seconds):
                await asyncio.sleep(5)
        except TimeoutError:
            finished[name] = time.monotonic() - began

    long = asyncio.ensure_future(bounded("long", 0.6))
    await asyncio.sleep(0.05)
    short = asyncio.ensure_future(bounded("short", 0.1))  # added later, due earlier
    await asyncio.gather(long, short)
    assert finished["short"] < 0.15 + TICK + 0.15
    assert 0.6 <= finished["long"] < 0.6 + TICK + 0.15
    deadlines.close()


async def test_many_connections_expire_together_in_one_tick() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    outcomes: list[str] = []

    async def bounded() -> None:
        try:
            with deadlines.limit(current(), 0.1):
                await asyncio.sleep(5)
            outcomes.append("finished")
        except TimeoutError:
            outcomes.append("timeout")

    await asyncio.gather(*(bounded() for _ in range(500)))
    assert outcomes == ["timeout"] * 500
    assert deadlines._queues == {}
    deadlines.close()
