"""Unlock's waits for a revision never hold up the projector, however gRPC cancels them.

gRPC cancels a handler at its deadline, and cancels it again while it unwinds. On Python
3.11 a second cancel inside `asyncio.wait_for`'s clean-up used to leave a Condition the
waiters shared with the projector locked by a task that had finished: every later advance
of the projector then waited for that lock forever (a revoke was not applied for 35 s).
"""

from __future__ import annotations

import asyncio
import random
import uuid

from latchkey.events.v1 import events_pb2 as ev

from latchkit import envelope
from latchkit.bus import BusSettings
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.projector import Projector
from services.access.service import UnlockService

BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)


class Message:
    """What the projector reads of a JetStream message."""

    def __init__(self, revision: int) -> None:
        changed = ev.AccessChanged(door_id="door", user_id=str(revision), door_time_zone="UTC")
        self.data = envelope.build(changed, actor="test", aggregate_key=f"pair/{revision}",
                                   aggregate_version=revision, revision=revision).SerializeToString()

    async def ack(self) -> None:
        pass


class StoreNothing(Projector):
    """The real progress bookkeeping, with no store behind it: only the wake-ups are under test."""

    async def store(self, batch) -> None:
        return None


async def test_doubly_cancelled_waiters_never_block_the_projector(tmp_path):
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    cache = RedisUnlockCache("redis://127.0.0.1:1/0", 60, 5)
    projector = StoreNothing(view, cache, BUS, SqliteRedisBacklog(tmp_path / "backlog.sqlite"),
                             instance=uuid.uuid4().hex)
    service = UnlockService(view, cache, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), BUS,
                                                               durability="async"),
                            b"k" * 32, projector=projector, min_revision_wait=10,
                            credential_throttle=DenialThrottle(60, 10), door_throttle=DenialThrottle(60, 10))
    shuffle = random.Random(7)  # a fixed interleaving: the same run every time

    async def spin(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)  # one event-loop turn: interleaves the tasks, waits for nothing

    partial: dict = {}
    for revision in range(1, 301):
        # Waiters for a revision not applied yet, as Unlock with min_revision has them ...
        waiters = [asyncio.create_task(service.wait_for_revision(revision + 1, 10)) for _ in range(3)]
        await spin(shuffle.randint(0, 2))
        # ... while the projector advances, and gRPC cancels each waiter twice (its deadline, then the
        # stream's reset) at whatever moment that happens to be.
        advance = asyncio.create_task(projector.apply([Message(revision)], partial))
        await spin(shuffle.randint(0, 2))
        for waiter in waiters:
            waiter.cancel()
        await spin(shuffle.randint(0, 2))
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        # Each advance completes at once: nothing it needs is held by a finished waiter.
        done, _ = await asyncio.wait({advance}, timeout=2)
        assert done, f"the projector could not publish revision {revision}"
        advance.result()
        assert projector.watermark == revision
    # A waiter that is not cancelled still wakes when the revision it wants is applied.
    waiter = asyncio.create_task(service.wait_for_revision(301, 10))
    await spin(2)
    await projector.apply([Message(301)], partial)
    assert await asyncio.wait_for(waiter, 2) == 301
    await cache.close()
