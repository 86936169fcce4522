"""The in-process async tests run on uvloop, the loop the server itself runs on.

conftest.py asks for it through pytest-asyncio's `pytest_asyncio_loop_factories` hook (1.4 and
later). Were the hook ever ignored, every async test would still pass on the default asyncio loop
and prove nothing about the loop in production, so this says it out loud.
"""

from __future__ import annotations

import asyncio

import uvloop


async def test_async_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
