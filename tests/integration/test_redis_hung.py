"""A hung Redis (a real redis-server, stopped with SIGSTOP: connections stay open, nothing answers)
costs one Unlock its socket timeout; the calls after it answer from the view without waiting."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from latchkit import secrets
from latchkit.bus import BusSettings
from latchkit.identity import Principal
from latchkit.stack import Stack, StackPorts
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.ports import CredentialRow, PairRow, ViewBatch
from services.access.service import UnlockService

KEY = b"k" * 32
BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)


class CountingCache(RedisUnlockCache):
    """The real adapter, counting the lookups Unlock sends to Redis."""

    lookups = 0

    async def lookup(self, *args, **kwargs):
        self.lookups += 1
        return await super().lookup(*args, **kwargs)


@pytest.fixture
def own_redis(stack):
    """A Redis of this test's own, under the test stack's state directory: freezing it stops no one else."""
    redis = Stack(stack.state_dir / f"hung-redis-{uuid.uuid4().hex[:6]}", StackPorts.free())
    redis.start_component("redis")
    yield redis
    redis.thaw_component("redis")
    redis.stop_component("redis")


async def test_after_one_timeout_unlock_answers_from_the_view_without_waiting_for_redis(own_redis, tmp_path):
    door, user, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    cache = CountingCache(own_redis.urls().redis_url, ttl=60, negative_ttl=5)
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    granted = ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC", rules=[ev.AccessRule(grant_id="g")])
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 2, granted.SerializeToString())],
                               credentials=[CredentialRow(str(uuid.uuid4()), user, 1,
                                                          secrets.hash_secret(KEY, 1, secret), False, 1)],
                               watermark=2))
    service = UnlockService(view, cache, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), BUS),
                            KEY, projector=None, min_revision_wait=0.05,
                            credential_throttle=DenialThrottle(60, 1000), door_throttle=DenialThrottle(60, 1000))
    controller = Principal(uri=f"spiffe://latchkey/door/{door}", kind="door", name=door)

    async def unlock():
        request = access_pb2.UnlockRequest(door_id=door, request_id=uuid.uuid4().hex,
                                           credential=access_pb2.PresentedCredential(kind=1, secret=secret))
        answer = await service.unlock(controller, request, 5)
        return answer.decision, answer.reason

    try:
        assert await unlock() == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
        await asyncio.gather(*list(service._background))  # its fills and replay record are in Redis
        assert cache.lookups == 1
        own_redis.freeze_component("redis")
        answers = [await unlock() for _ in range(20)]
        assert answers == [(ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)] * 20
        assert cache.lookups == 2  # the first one timed out; the others did not ask
    finally:
        own_redis.thaw_component("redis")
        await cache.close()
        await view.close()
