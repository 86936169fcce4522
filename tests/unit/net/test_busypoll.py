"""Polling after connection work: the window's rule, and that it never runs on its own.

The window is steered by the time between accepts, so these tests use gaps far on either side of
`MAX_WINDOW_NS` (back-to-back calls, and sleeps of milliseconds). What polling buys is latency,
which the benchmark measures (`bench/run.py`, CONNECT→200 at one client at a time)."""

from __future__ import annotations

import asyncio
import time

from connectproxy.net.busypoll import MAX_WINDOW_NS, MIN_WINDOW_NS, BusyPoll


def open_window(poll: BusyPoll) -> None:
    """Accepts back to back until the window is at its longest. Only the first two need to be
    under `MAX_WINDOW_NS` apart (after that the loop is polling), so retrying them keeps a rare
    preemption between two statements from failing a test."""
    for _ in range(1000):
        poll.arrived()
        if poll.window_ns == MAX_WINDOW_NS:
            return
    raise AssertionError("accepts back to back never opened the window")


async def settle(poll: BusyPoll) -> None:
    """Long past any window: the loop has stopped polling and slept."""
    await asyncio.sleep(0.005)
    assert not poll.polling


async def test_a_new_proxy_does_not_poll() -> None:
    poll = BusyPoll(asyncio.get_running_loop())
    poll.arrived()  # the first accept came after a long sleep: nothing to learn from yet
    poll.expect()
    assert poll.window_ns == 0 and not poll.polling


async def test_accepts_in_quick_succession_grow_the_window_to_its_longest() -> None:
    poll = BusyPoll(asyncio.get_running_loop())
    while poll.window_ns == 0:  # retried only if a preemption parted the first two
        poll.arrived()
    seen = [poll.window_ns]
    for _ in range(3):
        poll.arrived()
        seen.append(poll.window_ns)
    assert seen == [MIN_WINDOW_NS, 2 * MIN_WINDOW_NS, MAX_WINDOW_NS, MAX_WINDOW_NS]
    assert poll.polling
    await settle(poll)


async def test_accepts_far_apart_halve_it_down_to_no_polling() -> None:
    poll = BusyPoll(asyncio.get_running_loop())
    open_window(poll)
    seen = []
    for _ in range(3):
        await settle(poll)
        poll.arrived()
        seen.append(poll.window_ns)
    assert seen == [MAX_WINDOW_NS // 2, MIN_WINDOW_NS, 0]
    await settle(poll)
    poll.expect()
    assert not poll.polling


async def test_a_window_ends_and_the_idle_loop_sleeps() -> None:
    poll = BusyPoll(asyncio.get_running_loop())
    open_window(poll)
    began = time.monotonic_ns()
    poll.expect()
    assert poll.polling and poll.until_ns >= began + MAX_WINDOW_NS
    await settle(poll)
    # Asleep, the loop costs no CPU: polling did not go on by itself.
    cpu = time.process_time()
    await asyncio.sleep(0.2)
    assert time.process_time() - cpu < 0.05
    assert not poll.polling
