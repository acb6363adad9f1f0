"""A cancellation that a library swallowed still ends our long-running loops."""

from __future__ import annotations

import asyncio

import pytest

from latchkit.bus import raise_if_cancelled


async def test_a_cancel_lost_in_wait_for_still_ends_the_task():
    loop = asyncio.get_running_loop()
    reply = loop.create_future()
    started = asyncio.Event()
    never = loop.create_future()

    async def feed() -> None:
        # As nats-py awaits a request's reply; then the feed waits for its connection to close.
        started.set()
        await asyncio.wait_for(reply, timeout=60)
        raise_if_cancelled()
        await never

    task = asyncio.create_task(feed())
    await started.wait()
    await asyncio.sleep(0)  # one loop turn: the feed is now suspended inside wait_for
    # The reply and the cancel land in the same loop turn (Python 3.11's wait_for keeps the reply).
    reply.set_result("reply")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert not never.done()
