"""Redis that missed a change is not trusted until it has it: through an outage and a restart.

Real Redis and the embedded view. The projector loses Redis (its client cannot
authenticate; the workers' client still can, as in a partition) while a grant
is revoked; Redis still holds the grant.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
import redis.exceptions
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from latchkit import secret_hash
from latchkit.bus import BusSettings
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.ports import CredentialRow, PairRow, ViewBatch
from services.access.projector import Projector
from services.access.service import UnlockService

KEY = b"k" * 32
BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)
LEASE = 0.3


@pytest.fixture
async def world(urls, tmp_path):
    door, user, secret, instance = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex, str(uuid.uuid4())
    workers_redis = RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5, instance=instance)
    parts = urlsplit(urls.redis_url)
    cut_off = RedisUnlockCache(f"redis://nobody:wrong@{parts.hostname}:{parts.port}/0", ttl=60, negative_ttl=5,
                               instance=instance)
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    service = UnlockService(view, workers_redis, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                                                   BUS, durability="async"),
                            KEY, projector=None, min_revision_wait=0.05,
                            credential_throttle=DenialThrottle(60, 1000), door_throttle=DenialThrottle(60, 1000))
    yield service, workers_redis, cut_off, view, tmp_path / "redis-backlog.sqlite", door, user, secret
    await workers_redis.close()
    await cut_off.close()
    await view.close()


def projector(view, cache, path) -> Projector:
    return Projector(view, cache, BUS, SqliteRedisBacklog(path), instance="test", lease_seconds=LEASE)


async def unlock(service, door: str, secret: str):
    request = access_pb2.UnlockRequest(door_id=door, request_id=uuid.uuid4().hex,
                                       credential=access_pb2.PresentedCredential(kind=1, secret=secret))
    answer = await service.unlock(Principal(uri=f"spiffe://latchkey/door/{door}", kind="door", name=door),
                                  request, 5)
    return answer.decision, answer.reason, answer.view_revision


async def test_a_grant_revoked_while_the_projector_could_not_reach_redis_is_never_read_back(world):
    service, workers_redis, cut_off, view, backlog_path, door, user, secret = world
    first = projector(view, workers_redis, backlog_path)
    await first.keep_redis_current()  # nothing missed: it takes the lease
    granted = ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC", rules=[ev.AccessRule(grant_id="g")])
    card = CredentialRow(str(uuid.uuid4()), user, 1, secret_hash.hash_secret(KEY, 1, secret), False, 1)
    await first.store(ViewBatch(pairs=[PairRow(door, user, 1, granted.SerializeToString())], credentials=[card],
                                watermark=1))
    assert await unlock(service, door, secret) == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED, 1)

    # The projector loses Redis; the grant is revoked. Redis still says granted.
    first.cache = cut_off
    await first.store(ViewBatch(pairs=[PairRow(door, user, 2, b"")], watermark=2))
    assert await workers_redis.client.hget(f"lk:p:{door}:{user}", "v") == b"1"
    assert not await workers_redis.client.exists(workers_redis.lease_key)  # lapsed before the view moved
    assert await first.backlog.count() == 1
    assert await unlock(service, door, secret) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT, 2)
    # Renewing fails while Redis is away: the lease stays lapsed.
    with pytest.raises(redis.exceptions.AuthenticationError):
        await first.keep_redis_current()
    assert not await workers_redis.client.exists(workers_redis.lease_key)

    # The process restarts (nothing in memory survives) and Redis answers again.
    await first.backlog.close()
    second = projector(view, workers_redis, backlog_path)
    assert await second.backlog.count() == 1
    await second.keep_redis_current()
    assert await second.backlog.count() == 0
    assert await workers_redis.client.hget(f"lk:p:{door}:{user}", "v") == b"2"
    assert await workers_redis.client.exists(workers_redis.lease_key)
    assert await unlock(service, door, secret) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT, 2)
    await second.backlog.close()


async def test_the_backlog_keeps_a_key_once_however_often_it_changed(tmp_path):
    backlog = SqliteRedisBacklog(tmp_path / "b.sqlite")
    for _ in range(3):
        await backlog.add([("d", "u"), ("d", "v")], [(1, b"h" * 32)])
    assert await backlog.count() == 3
    pairs, creds = await backlog.take(10)
    assert sorted(pairs) == [("d", "u"), ("d", "v")] and creds == [(1, b"h" * 32)]
    await backlog.remove(pairs[:1], creds)
    assert await backlog.count() == 1
    await backlog.close()


async def test_a_long_backlog_is_written_a_chunk_at_a_time_then_the_lease_is_taken(world, monkeypatch):
    _, workers_redis, cut_off, view, backlog_path, door, _, _ = world
    monkeypatch.setattr("services.access.projector.REPLAY_CHUNK", 2)
    users = [str(uuid.uuid4()) for _ in range(5)]
    first = projector(view, cut_off, backlog_path)  # Redis unreachable from the start
    await first.store(ViewBatch(pairs=[PairRow(door, u, 3, b"") for u in users], watermark=3))
    assert await first.backlog.count() == 5
    first.cache = workers_redis
    await first.keep_redis_current()
    assert await first.backlog.count() == 0
    assert [await workers_redis.client.hget(f"lk:p:{door}:{u}", "v") for u in users] == [b"3"] * 5
    assert await workers_redis.client.exists(workers_redis.lease_key)
    await first.backlog.close()
