"""The write queue's own rules (admission by time, expiry, groups, deferral), with a scripted
group runner in place of the database: what a group does is decided by the test."""

from __future__ import annotations

import asyncio

import pytest

from latchkit.errors import ResourceExhausted
from services.permissions.adapters.write_queue import Pending, WriteQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Runner:
    """Runs each group when the test lets it: each `release()` lets one group finish."""

    def __init__(self, clock: Clock, group_seconds: float = 0.0) -> None:
        self.groups: list[list[str]] = []
        self.gate = asyncio.Semaphore(0)
        self.clock = clock
        self.group_seconds = group_seconds
        self.defer_next: set[str] = set()
        self.queue: WriteQueue | None = None

    async def __call__(self, group: list[Pending]) -> None:
        names = [await item.run(None) for item in group]
        self.groups.append(names)
        await self.gate.acquire()
        self.clock.now += self.group_seconds
        deferred = [item for item, name in zip(group, names, strict=True) if name in self.defer_next]
        self.defer_next -= set(names)
        assert self.queue is not None
        self.queue.defer(deferred)
        for item, name in zip(group, names, strict=True):
            if item not in deferred:
                item.future.set_result(name)

    def release(self, groups: int = 1) -> None:
        for _ in range(groups):
            self.gate.release()


async def until_true(condition, what: str) -> None:
    """Let the other tasks run until `condition()` holds (no clock involved), or fail."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)  # a yield to the event loop, not a wait for time
    raise AssertionError(f"never happened: {what}")


def write(name: str):
    async def work(_uow) -> str:
        return name
    return work


def queue_with(runner: Runner, clock: Clock, **kw) -> WriteQueue:
    queue = WriteQueue(runner, clock=clock, **{"max_group": 4, "budget_s": 1.0, **kw})
    runner.queue = queue
    return queue


async def test_writes_waiting_behind_a_group_run_together_in_the_next_one():
    clock = Clock()
    runner = Runner(clock)
    queue = queue_with(runner, clock)
    first = asyncio.ensure_future(queue.submit(write("a")))
    await until_true(lambda: len(runner.groups) == 1, "the first group to start")
    rest = [asyncio.ensure_future(queue.submit(write(n))) for n in "bcdef"]
    await until_true(lambda: queue.waiting == 5, "five writes queued behind it")
    runner.release(3)
    assert await first == "a" and [await t for t in rest] == list("bcdef")
    assert runner.groups == [["a"], ["b", "c", "d", "e"], ["f"]]  # at most max_group a group
    await queue.close()


async def test_a_write_is_refused_when_the_running_group_is_stuck_past_the_budget():
    clock = Clock()
    runner = Runner(clock)
    queue = queue_with(runner, clock)
    stuck = asyncio.ensure_future(queue.submit(write("a")))
    await until_true(lambda: len(runner.groups) == 1, "the first group to start")
    clock.now += 0.5
    admitted = asyncio.ensure_future(queue.submit(write("b")))  # within the budget: queued
    await until_true(lambda: queue.waiting == 1, "the second write queued")
    clock.now += 0.6
    with pytest.raises(ResourceExhausted) as refused:
        await queue.submit(write("c"))
    assert 0 < refused.value.retry_after_s <= 5
    runner.release(2)
    assert await stuck == "a" and await admitted == "b"
    assert runner.groups == [["a"], ["b"]]
    await queue.close()


async def test_full_groups_queued_ahead_count_against_the_budget():
    clock = Clock()
    runner = Runner(clock, group_seconds=0.4)
    queue = queue_with(runner, clock)
    runner.release()
    assert await queue.submit(write("w0")) == "w0"  # one group took 0.4 s: what a group costs now
    blocker = asyncio.ensure_future(queue.submit(write("x")))
    await until_true(lambda: len(runner.groups) == 2, "the next group to start")
    # Four queued ahead = one full group (0.4 s) plus the rest of the running one (0.4 s): admitted.
    ahead = [asyncio.ensure_future(queue.submit(write(f"q{i}"))) for i in range(4)]
    await until_true(lambda: queue.waiting == 4, "four writes queued")
    admitted = asyncio.ensure_future(queue.submit(write("fits")))
    await until_true(lambda: queue.waiting == 5, "the fifth queued")
    # Eight ahead = two full groups (0.8 s) plus the rest of the running one: over the 1 s budget.
    more = [asyncio.ensure_future(queue.submit(write(f"r{i}"))) for i in range(3)]
    await until_true(lambda: queue.waiting == 8, "eight writes queued")
    with pytest.raises(ResourceExhausted):
        await queue.submit(write("late"))
    runner.release(4)
    assert [await t for t in (blocker, *ahead, admitted, *more)] == ["x", "q0", "q1", "q2", "q3", "fits",
                                                                       "r0", "r1", "r2"]
    await queue.close()


async def test_an_admitted_write_that_cannot_start_in_time_is_refused_without_running():
    clock = Clock()
    runner = Runner(clock)
    queue = queue_with(runner, clock, budget_s=10.0, max_wait_s=0.01)
    stuck = asyncio.ensure_future(queue.submit(write("a")))
    await until_true(lambda: len(runner.groups) == 1, "the first group to start")
    with pytest.raises(ResourceExhausted):
        await queue.submit(write("never"))  # the event loop's timer expires it while "a" holds on
    runner.release()
    assert await stuck == "a"
    await queue.close()
    assert runner.groups == [["a"]]


async def test_a_deferred_write_runs_first_in_the_next_group():
    clock = Clock()
    runner = Runner(clock)
    queue = queue_with(runner, clock)
    first = asyncio.ensure_future(queue.submit(write("a")))
    await until_true(lambda: len(runner.groups) == 1, "the first group to start")
    tasks = [asyncio.ensure_future(queue.submit(write(n))) for n in "bcd"]
    await until_true(lambda: queue.waiting == 3, "three queued")
    runner.defer_next = {"c"}
    runner.release()
    await until_true(lambda: len(runner.groups) == 2, "the second group to start")
    later = asyncio.ensure_future(queue.submit(write("e")))
    await until_true(lambda: queue.waiting == 1, "e queued")
    runner.release(2)
    assert [await t for t in (first, *tasks, later)] == list("abcde")
    assert runner.groups == [["a"], ["b", "c", "d"], ["c", "e"]]
    await queue.close()


async def test_a_caller_that_gives_up_before_its_group_is_never_run():
    clock = Clock()
    runner = Runner(clock)
    queue = queue_with(runner, clock)
    first = asyncio.ensure_future(queue.submit(write("a")))
    await until_true(lambda: len(runner.groups) == 1, "the first group to start")
    gone = asyncio.ensure_future(queue.submit(write("gone")))
    kept = asyncio.ensure_future(queue.submit(write("kept")))
    await until_true(lambda: queue.waiting == 2, "two queued")
    gone.cancel()
    runner.release(2)
    assert await first == "a" and await kept == "kept"
    assert runner.groups == [["a"], ["kept"]]
    await queue.close()
