"""The write queue in front of group commit: admission bounded by time, and one committer.

Writes wait here while a transaction holds the revision lock; the committer
takes everything waiting (up to `max_group`) as the next group and runs it as
one transaction (`run_group`, the database's part), so one lock hold, one
fsync and one relay wake-up serve the whole group.

Admission is bounded by time, not by pool size: a write is refused at once,
with ResourceExhausted and a retry delay, when the wait it would have (what is
queued ahead of it at the recent cost per write, or how long the current
transaction has already been stuck, or the oldest queued write has waited)
exceeds `budget_s`. What is queued ahead costs whole groups: the rest of the
running one, then floor(queued / max_group) times the recent time of a group. A write admitted but
still waiting after `max_wait_s` (the database stalled meanwhile) is refused
the same way, without having run. Both refusals wrote nothing. A write that
has started always gets its real outcome.

Only the wait for the database is bounded here. A service short of CPU (on a
small machine, past about a thousand calls a second) holds calls back inside
gRPC, before they reach this queue and out of its sight (docs/operations.md,
"Writes under load").

Each write runs in a copy of its caller's context (identity, trace), in a task
of its own, so a caller cancelled while its write runs does not interrupt the
shared transaction.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from latchkit.errors import ResourceExhausted, Unavailable

log = logging.getLogger("latchkey.permissions.writes")
T = TypeVar("T")
# How fast the time-of-a-group estimate follows the last groups.
EWMA_WEIGHT = 0.2
RETRY_AFTER_BOUNDS_S = (0.02, 5.0)


@dataclass(eq=False)
class Pending(Generic[T]):
    """One write waiting for, or in, a group."""

    work: Callable[[Any], Awaitable[T]]
    context: contextvars.Context
    future: asyncio.Future
    queued_at: float
    timer: asyncio.TimerHandle | None = None
    started: bool = field(default=False)
    deferred: bool = field(default=False)
    """Back in the queue for the next group: whatever happens to this one is not its outcome."""
    together: Any = None
    """`ports.Together`, if it may run in one call with others of its kind."""
    together_key: Any = None
    """Writes with equal keys may run in one call (the adapter sets it: kind, caller)."""

    def run(self, uow: Any) -> asyncio.Task:
        """The work as a task in its caller's context."""
        async def call() -> T:
            return await self.work(uow)
        return asyncio.get_running_loop().create_task(call(), context=self.context)

    def run_all(self, uow: Any, unit: list[Pending]) -> asyncio.Task:
        """`together.run_all` for the items of `unit` (this one first), in this write's context."""
        async def call() -> list:
            return list(await self.together.run_all(uow, [item.together.item for item in unit]))
        return asyncio.get_running_loop().create_task(call(), context=self.context)


class WriteQueue:
    def __init__(self, run_group: Callable[[list[Pending]], Awaitable[None]], *, max_group: int,
                 budget_s: float, max_wait_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run_group = run_group
        self.max_group = max_group
        self.budget_s = budget_s
        self.max_wait_s = max_wait_s if max_wait_s is not None else 4 * budget_s
        self._clock = clock
        self._queue: collections.deque[Pending] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._committer: asyncio.Task | None = None
        self._busy_since: float | None = None
        self.group_s = 0.0
        """Recent wall time of one group (an average weighted to the last ones)."""
        self.refused = 0

    @property
    def busy(self) -> bool:
        """A group's transaction is running."""
        return self._busy_since is not None

    @property
    def waiting(self) -> int:
        """Writes queued for the next group (callers that gave up included until it starts)."""
        return len(self._queue)

    # ---- callers -------------------------------------------------------------
    async def submit(self, work: Callable[[Any], Awaitable[T]], together: Any = None,
                     together_key: Any = None) -> Any:
        """What `run_group` set for this write (the value and revision), or its error."""
        self._admit()
        loop = asyncio.get_running_loop()
        item: Pending[T] = Pending(work, contextvars.copy_context(), loop.create_future(), self._clock(),
                                   together=together, together_key=together_key)
        item.timer = loop.call_later(self.max_wait_s, self._expire, item)
        self._queue.append(item)
        self._start(loop)
        assert self._wake is not None
        self._wake.set()
        # Cancelling the caller cancels the future: a write not yet started is then skipped.
        return await item.future

    def _admit(self) -> None:
        now = self._clock()
        busy = self._busy_since is not None
        stuck = now - self._busy_since if self._busy_since is not None else 0.0
        oldest = now - self._queue[0].queued_at if self._queue else 0.0
        # The rest of the running group, then every full group queued ahead of this write.
        ahead = (max(self.group_s - stuck, 0.0) if busy else 0.0) + len(self._queue) // self.max_group * self.group_s
        wait = max(ahead, stuck, oldest)
        if wait > self.budget_s:
            self.refused += 1
            low, high = RETRY_AFTER_BOUNDS_S
            raise ResourceExhausted(
                f"the permissions database is at capacity (a write would wait about {wait * 1000:.0f} ms, "
                f"over the {self.budget_s * 1000:.0f} ms allowed); nothing was written, retry after the delay",
                retry_after_s=min(high, max(low, wait - self.budget_s, ahead)))

    def _expire(self, item: Pending) -> None:
        if not item.started and not item.future.done():
            self.refused += 1
            item.future.set_exception(ResourceExhausted(
                f"the write waited {self.max_wait_s * 1000:.0f} ms for the database without starting; "
                "nothing was written, retry after the delay", retry_after_s=self.budget_s))

    # ---- the committer -----------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._committer is None or self._committer.done():
            self._wake = asyncio.Event()
            self._committer = loop.create_task(self._commit_forever(), name="group-commit")

    async def _commit_forever(self) -> None:
        assert self._wake is not None
        try:
            while True:
                group = self._next_group()
                if not group:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                started = self._busy_since = self._clock()
                try:
                    await self._run_group(group)
                except Exception:  # run_group settles its writes; this is a bug there: fail them, go on
                    log.exception("a write group failed unexpectedly")
                    for item in group:
                        if not item.future.done() and not item.deferred:
                            item.future.set_exception(Unavailable("the write failed; retry"))
                finally:
                    self._busy_since = None
                took = self._clock() - started
                self.group_s += EWMA_WEIGHT * (took - self.group_s) if self.group_s else took
        finally:  # stopping: nothing waits for a committer that is gone
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(Unavailable("the service is stopping; retry"))
            self._queue.clear()

    def _next_group(self) -> list[Pending]:
        group: list[Pending] = []
        while self._queue and len(group) < self.max_group:
            item = self._queue.popleft()
            if item.future.done():  # cancelled by its caller, or expired
                continue
            item.started = True
            item.deferred = False
            if item.timer is not None:
                item.timer.cancel()
            group.append(item)
        return group

    def defer(self, items: list[Pending]) -> None:
        """Writes taken into a group that must run in the next one instead: first in the queue,
        in their order (they were admitted and have waited already)."""
        for item in items:
            item.deferred = True
        self._queue.extendleft(reversed(items))

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                pass
