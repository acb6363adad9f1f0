"""Unlock's lookup order with in-memory ports: the per-process cache, then Redis, then the view;
the fills each step leaves behind, the Redis pause, the time budget, and the precedence of what
the per-process cache holds. The real UnlockService and LocalCache; fakes for the ports."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import pytest
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev
from prometheus_client import REGISTRY

from latchkit import envelope, secret_hash
from latchkit.bus import BusSettings
from latchkit.identity import Principal
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle, cred_key
from services.access.local_cache import MISS, LocalCache
from services.access.ports import CachedCredential, CachedPair, CredentialRow, PairRow, ViewBatch
from services.access.service import UnlockService
from tests.unit.fakes_access import FakeDecisionSpool, FakeUnlockCache, FakeUnlockView

KEY = b"k" * 32
BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)
GRANTED = (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
SOURCES = ("memory", "redis", "view")


def rules(door: str, user: str, granted: bool) -> bytes:
    return ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC",
                            rules=[ev.AccessRule(grant_id="g")] if granted else []).SerializeToString()


def answered_from() -> dict[str, float]:
    return {s: REGISTRY.get_sample_value("latchkey_access_unlock_answered_from_total", {"source": s}) or 0.0
            for s in SOURCES}


@dataclass
class Door:
    service: UnlockService
    view: FakeUnlockView
    cache: FakeUnlockCache
    spool: FakeDecisionSpool
    local: LocalCache | None
    door: str
    user: str
    secret: str

    @property
    def key(self) -> str:
        return cred_key(1, secret_hash.hash_secret(KEY, 1, self.secret))

    async def unlock(self, time_remaining: float = 5.0, request_id: str | None = None):
        request = access_pb2.UnlockRequest(door_id=self.door, request_id=request_id or uuid.uuid4().hex,
                                           credential=access_pb2.PresentedCredential(kind=1, secret=self.secret))
        controller = Principal(uri=f"spiffe://latchkey/door/{self.door}", kind="door", name=self.door)
        return await self.service.unlock(controller, request, time_remaining)

    async def decide(self, time_remaining: float = 5.0) -> tuple[int, int]:
        answer = await self.unlock(time_remaining)
        return answer.decision, answer.reason

    async def recorded_reasons(self) -> list[int]:
        """The reasons of the decision events recorded so far, read back from the spool."""
        await self.service.decisions.spill(everything=True)
        return [envelope.parse(payload).unlock_decided.reason for _, _, _, payload in await self.spool.oldest(100)]


async def make_door(with_local: bool) -> Door:
    """A card granted at the door, in the view at revision 2; Redis empty; the per-process
    cache (if any) live from revision 2 and empty."""
    door, user, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    view, cache, spool = FakeUnlockView(), FakeUnlockCache(), FakeDecisionSpool()
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 2, rules(door, user, True))],
                               credentials=[CredentialRow("c-1", user, 1, secret_hash.hash_secret(KEY, 1, secret),
                                                          False, 1)],
                               watermark=2))
    local = None
    if with_local:
        local = LocalCache(BUS, capacity=1000, ttl=60, negative_ttl=5, view_watermark=lambda: view.applied)
        local.start(floor=2)
    service = UnlockService(view, cache, DecisionPublisher(spool, BUS, durability="async"), KEY, projector=None,
                            min_revision_wait=0.05, credential_throttle=DenialThrottle(60, 1000),
                            door_throttle=DenialThrottle(60, 1000), local=local)
    return Door(service, view, cache, spool, local, door, user, secret)


@pytest.fixture
async def door():
    return await make_door(with_local=True)


@pytest.fixture
async def door_without_memory():
    return await make_door(with_local=False)


def delta(before: dict[str, float]) -> dict[str, float]:
    after = answered_from()
    return {s: after[s] - before[s] for s in SOURCES}


async def test_a_memory_hit_asks_neither_redis_nor_the_view(door):
    # A first call fills the per-process cache from the view.
    assert await door.decide() == GRANTED
    await door.service.settled()
    reads, lookups = door.view.reads, door.cache.lookups
    # Then the rows go from the view and Redis: the per-process cache still answers alone.
    door.view.pairs.clear()
    door.cache.pairs.clear()
    before = answered_from()
    assert await door.decide() == GRANTED
    assert (door.view.reads, door.cache.lookups) == (reads, lookups)
    assert delta(before) == {"memory": 1, "redis": 0, "view": 0}


async def test_a_memory_miss_answered_by_redis_fills_memory(door):
    # Redis has the rows, the view has none of them (it would say "unknown credential").
    await door.cache.write([PairRow(door.door, door.user, 2, rules(door.door, door.user, True))],
                           [CredentialRow("c-1", door.user, 1, secret_hash.hash_secret(KEY, 1, door.secret), False, 1)])
    door.view.pairs.clear()
    door.view.credentials.clear()
    before = answered_from()
    assert await door.decide() == GRANTED
    assert delta(before) == {"memory": 0, "redis": 1, "view": 0}
    assert door.view.reads == 0
    # What Redis gave is now in memory: with Redis emptied, memory answers.
    assert door.local.pair(door.door, door.user) is not MISS
    door.cache.pairs.clear()
    door.cache.credentials.clear()
    assert await door.decide() == GRANTED
    assert door.cache.lookups == 1


async def test_a_redis_miss_answered_by_the_view_fills_redis_and_memory(door):
    before = answered_from()
    assert await door.decide() == GRANTED
    assert delta(before) == {"memory": 0, "redis": 0, "view": 1}
    await door.service.settled()  # Redis' fills are background writes
    assert door.cache.pairs[(door.door, door.user)] == CachedPair(2, rules(door.door, door.user, True))
    assert door.cache.credentials[door.key] == CachedCredential(1, "c-1", door.user, False)
    assert door.local.credential(door.key) is not MISS
    assert door.local.pair(door.door, door.user) is not MISS


async def test_without_memory_a_redis_hit_leaves_the_view_alone(door_without_memory):
    door = door_without_memory
    # The first call reads the view and fills Redis; the second one finds everything in Redis.
    assert await door.decide() == GRANTED
    await door.service.settled()
    reads = door.view.reads
    before = answered_from()
    assert await door.decide() == GRANTED
    assert door.view.reads == reads
    assert delta(before) == {"memory": 0, "redis": 1, "view": 0}


async def test_a_failing_redis_is_paused_and_the_view_answers(door_without_memory):
    door = door_without_memory
    door.cache.fail = ConnectionError("redis down")
    assert await door.decide() == GRANTED
    # Paused: the next calls do not ask Redis at all.
    assert [await door.decide() for _ in range(5)] == [GRANTED] * 5
    assert door.cache.lookups == 1


async def test_a_hung_redis_costs_one_call_its_budget_and_the_view_still_answers_in_time(door_without_memory):
    door = door_without_memory
    door.cache.hang = True
    # The first call waits for Redis until its lookup budget is spent; the view, which needs
    # no wait here, still answers before the caller's deadline.
    started = time.monotonic()
    assert await door.decide(0.2) == GRANTED
    assert time.monotonic() - started < 0.2
    # Redis is paused now: the next calls go straight to the view.
    assert [await door.decide(0.2) for _ in range(3)] == [GRANTED] * 3
    assert door.cache.lookups == 1
    assert await door.recorded_reasons() == [ev.DECISION_REASON_GRANTED] * 4


async def test_a_deadline_too_short_for_redis_skips_it_without_pausing_it(door_without_memory):
    door = door_without_memory
    # 30 ms leave no lookup budget (50 ms are kept to answer): the view answers alone.
    assert await door.decide(0.03) == GRANTED
    assert door.cache.lookups == 0
    assert await door.decide() == GRANTED
    assert door.cache.lookups == 1


@pytest.mark.parametrize("view_failure", ["down", "hung"])
async def test_redis_and_the_view_failing_deny_unavailable_within_the_deadline(door_without_memory, view_failure):
    door = door_without_memory
    door.cache.fail = ConnectionError("redis down")
    if view_failure == "down":
        door.view.fail = ConnectionError("view down")
    else:
        door.view.hang = True
    started = time.monotonic()
    assert await door.decide(0.3) == (ev.DECISION_DENIED, ev.DECISION_REASON_UNAVAILABLE)
    assert time.monotonic() - started < 0.3
    assert await door.recorded_reasons() == [ev.DECISION_REASON_UNAVAILABLE]


async def test_rows_the_view_cannot_read_in_time_deny_unavailable(door_without_memory):
    door = door_without_memory
    # The view's revision answers, its rows do not: Redis down, so nothing else can.
    door.cache.fail = ConnectionError("redis down")
    watermark = door.view.watermark

    async def rows_hang():
        applied = await watermark()
        door.view.hang = True
        return applied

    door.view.watermark = rows_hang
    assert await door.decide(0.3) == (ev.DECISION_DENIED, ev.DECISION_REASON_UNAVAILABLE)


async def test_a_newer_tombstone_in_memory_wins_over_an_older_grant_in_redis(door):
    # Redis still holds the grant (version 2) and the credential.
    await door.cache.write([PairRow(door.door, door.user, 2, rules(door.door, door.user, True))],
                           [CredentialRow("c-1", door.user, 1, secret_hash.hash_secret(KEY, 1, door.secret), False, 1)])
    # The feed brings the revoke (version 3, revision 3) into the per-process cache.
    door.local.apply(envelope.build(ev.AccessChanged(door_id=door.door, user_id=door.user, door_time_zone="UTC"),
                                    actor="test", aggregate_key=f"access/{door.door}/{door.user}",
                                    aggregate_version=3, revision=3))
    # The credential is a memory miss, so Redis is asked; its pair is overridden by the tombstone.
    answer = await door.unlock()
    assert (answer.decision, answer.reason, answer.view_revision) == (
        ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT, 3)
    assert door.cache.lookups == 1


async def test_a_revoked_credential_in_redis_denies_without_the_view(door_without_memory):
    door = door_without_memory
    await door.cache.write([], [CredentialRow("c-1", door.user, 1, secret_hash.hash_secret(KEY, 1, door.secret),
                                              True, 5)])
    assert await door.decide() == (ev.DECISION_DENIED, ev.DECISION_REASON_CREDENTIAL_REVOKED)
    assert door.view.reads == 0


async def test_a_cached_unknown_credential_denies_without_the_view(door_without_memory):
    door = door_without_memory
    await door.cache.fill_credential(door.key, None)
    answer = await door.unlock()
    assert (answer.decision, answer.reason, answer.user_id) == (
        ev.DECISION_DENIED, ev.DECISION_REASON_UNKNOWN_CREDENTIAL, "")
    assert door.view.reads == 0


async def test_an_answer_another_process_gave_is_returned_as_it_was(door):
    # The per-process cache would grant; another process already denied this request id.
    assert await door.decide() == GRANTED
    earlier = access_pb2.UnlockResponse(decision=ev.DECISION_DENIED, reason=ev.DECISION_REASON_NO_GRANT,
                                        decision_id="elsewhere")
    door.cache.answers[(door.door, "r-1")] = earlier.SerializeToString()
    assert await door.unlock(request_id="r-1") == earlier
    # Nothing new was decided, so nothing new is recorded.
    assert await door.recorded_reasons() == [ev.DECISION_REASON_GRANTED]


async def test_a_durable_answer_is_shared_through_redis_for_retries(door):
    answer = await door.unlock(request_id="r-2")
    await door.service.settled()
    assert door.cache.answers[(door.door, "r-2")] == answer.SerializeToString()
