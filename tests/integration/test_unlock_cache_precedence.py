"""Unlock in the per-process cache's mode: on a miss, Redis and the view answer, but what the cache
holds wins, because the answer claims the cache's revision. Real Redis, the embedded view."""

from __future__ import annotations

import uuid

import pytest
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from latchkit import envelope, secret_hash
from latchkit.bus import BusSettings
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.local_cache import LocalCache
from services.access.ports import CredentialRow, PairRow, ViewBatch
from services.access.service import UnlockService

KEY = b"k" * 32
BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)


def access(door: str, user: str, granted: bool) -> ev.AccessChanged:
    return ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC",
                            rules=[ev.AccessRule(grant_id="g")] if granted else [])


@pytest.fixture
async def world(urls, tmp_path):
    """Redis and the view at revision 9: the card's user may open the door."""
    door, user, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    digest = secret_hash.hash_secret(KEY, 1, secret)
    pair = PairRow(door, user, 9, access(door, user, True).SerializeToString())
    cred = CredentialRow(str(uuid.uuid4()), user, 1, digest, False, 3)
    cache = RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5, instance=door)
    await cache.write([pair], [cred])
    await cache.hold_lease(60)
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    await view.apply(ViewBatch(pairs=[pair], credentials=[cred], watermark=9))
    view_watermark = [9]
    local = LocalCache(BUS, capacity=100, ttl=60, negative_ttl=5, view_watermark=lambda: view_watermark[0])
    service = UnlockService(view, cache, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), BUS,
                                                               durability="async"),
                            KEY, projector=None, min_revision_wait=0.05,
                            credential_throttle=DenialThrottle(60, 1000), door_throttle=DenialThrottle(60, 1000),
                            local=local)
    yield service, local, view_watermark, door, user, secret
    await cache.close()
    await view.close()


def request(door: str, secret: str, min_revision: int) -> access_pb2.UnlockRequest:
    return access_pb2.UnlockRequest(door_id=door, min_revision=min_revision, request_id=uuid.uuid4().hex,
                                    credential=access_pb2.PresentedCredential(kind=1, secret=secret))


def controller(door: str) -> Principal:
    return Principal(uri=f"spiffe://latchkey/door/{door}", kind="door", name=door)


async def test_a_revoke_the_cache_holds_beats_an_older_grant_in_redis(world):
    service, local, _, door, user, secret = world
    local.start(floor=9)
    # Revision 10 revokes the pair: the cache's feed has it, the projector (Redis, view) not yet.
    local.apply(envelope.build(access(door, user, False), actor="test", aggregate_key=f"access/{door}/{user}",
                               aggregate_version=10, revision=10))
    # The card itself is not in the cache: this call goes to Redis, which still says granted.
    answer = await service.unlock(controller(door), request(door, secret, 10), 5)
    assert (answer.decision, answer.reason, answer.view_revision) == (
        ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT, 10)


async def test_below_the_floor_the_cache_does_not_answer_for_revisions_the_view_lacks(world):
    service, local, view_watermark, door, user, secret = world
    view_watermark[0] = 8  # the projector has not reached the revision the feed started after
    local.start(floor=9)
    local.apply(envelope.build(access(door, user, False), actor="test", aggregate_key=f"access/{door}/{user}",
                               aggregate_version=10, revision=10))
    assert not local.answers_at(10)
    # The old path: the view (at 9) cannot show revision 10 within the wait: a stale-view denial.
    answer = await service.unlock(controller(door), request(door, secret, 10), 5)
    assert (answer.decision, answer.reason, answer.view_revision) == (
        ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW, 9)


async def test_a_cache_emptied_while_redis_answers_makes_the_answer_a_denial(world, monkeypatch):
    service, local, _, door, user, secret = world
    local.start(floor=9)
    local.apply(envelope.build(access(door, user, False), actor="test", aggregate_key=f"access/{door}/{user}",
                               aggregate_version=10, revision=10))
    lookup = service.cache.lookup

    async def lookup_while_the_feed_stops(*args, **kwargs):
        answer = await lookup(*args, **kwargs)
        local.stop()  # NATS went away during the round trip: the revoke the cache held is gone
        return answer

    monkeypatch.setattr(service.cache, "lookup", lookup_while_the_feed_stops)
    answer = await service.unlock(controller(door), request(door, secret, 10), 5)
    assert (answer.decision, answer.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_UNAVAILABLE)
