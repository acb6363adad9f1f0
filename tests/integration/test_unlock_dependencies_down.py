"""Unlock while Redis or the view fail. A hung Redis is a real redis-server stopped with SIGSTOP
(connections stay open, nothing answers): it costs one Unlock its socket timeout, and the calls
after it answer from the view without waiting. With the view down or hung as well, Unlock still
answers within the caller's deadline: DENIED, reason UNAVAILABLE, and the decision is recorded."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from devstack.stack import Stack, StackPorts
from latchkit import envelope, secret_hash
from latchkit.bus import BusSettings
from latchkit.errors import Unavailable
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.grpc_api import AccessServicer
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


class HangingView(SqliteUnlockView):
    """The real embedded view whose row lookups never return once `hang` is set: what an
    unreachable ScyllaDB looks like to Unlock until the driver's own timeout (2 s)."""

    hang = False

    async def _stall(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def get_pair(self, door_id: str, user_id: str):
        await self._stall()
        return await super().get_pair(door_id, user_id)

    async def get_credential(self, kind: int, secret_hash: bytes):
        await self._stall()
        return await super().get_credential(kind, secret_hash)


@pytest.fixture
def own_redis(stack):
    """A Redis of this test's own, under the test stack's state directory: freezing it stops no one else."""
    redis = Stack(stack.state_dir / f"hung-redis-{uuid.uuid4().hex[:6]}", StackPorts.free())
    redis.start_component("redis")
    yield redis
    redis.thaw_component("redis")
    redis.stop_component("redis")


@dataclass
class Door:
    service: UnlockService
    cache: CountingCache
    view: HangingView
    door: str
    secret: str

    async def unlock(self, time_remaining: float = 5, min_revision: int = 0):
        request = access_pb2.UnlockRequest(door_id=self.door, request_id=uuid.uuid4().hex, min_revision=min_revision,
                                           credential=access_pb2.PresentedCredential(kind=1, secret=self.secret))
        controller = Principal(uri=f"spiffe://latchkey/door/{self.door}", kind="door", name=self.door)
        answer = await self.service.unlock(controller, request, time_remaining)
        return answer.decision, answer.reason

    async def recorded_reasons(self) -> list[int]:
        """The reasons of the decision events recorded so far, in order (moved to the spool, as
        the publisher does when NATS does not answer, and read back from it)."""
        await self.service.decisions.spill(everything=True)
        rows = await self.service.decisions.spool.oldest(1000)
        return [envelope.parse(payload).unlock_decided.reason for _, _, _, payload in rows]


@pytest.fixture
async def door(own_redis, tmp_path):
    """A door whose card is granted, in the view; Redis (frozen at will) in front of it."""
    door, user, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    cache = CountingCache(own_redis.urls().redis_url, ttl=60, negative_ttl=5)
    view = HangingView(tmp_path / "view.sqlite")
    await view.open()
    granted = ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC", rules=[ev.AccessRule(grant_id="g")])
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 2, granted.SerializeToString())],
                               credentials=[CredentialRow(str(uuid.uuid4()), user, 1,
                                                          secret_hash.hash_secret(KEY, 1, secret), False, 1)],
                               watermark=2))
    service = UnlockService(view, cache, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), BUS,
                                                               durability="async"),
                            KEY, projector=None, min_revision_wait=0.05,
                            credential_throttle=DenialThrottle(60, 1000), door_throttle=DenialThrottle(60, 1000))
    yield Door(service, cache, view, door, secret)
    await cache.close()
    await view.close()


async def test_after_one_timeout_unlock_answers_from_the_view_without_waiting_for_redis(door, own_redis):
    assert await door.unlock() == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
    await door.service.settled()  # its fills and replay record are in Redis
    assert door.cache.lookups == 1
    own_redis.freeze_component("redis")
    answers = [await door.unlock() for _ in range(20)]
    assert answers == [(ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)] * 20
    assert door.cache.lookups == 2  # the first one timed out; the others did not ask


@pytest.mark.parametrize("time_remaining", [0.2, 1.0])
async def test_redis_and_the_view_hung_deny_unavailable_within_the_deadline(door, own_redis, time_remaining):
    # 0.2 s is less than Redis' socket timeout (0.25 s): the deadline, not the socket, ends the wait.
    own_redis.freeze_component("redis")
    door.view.hang = True
    started = time.monotonic()
    answer = await door.unlock(time_remaining)
    elapsed = time.monotonic() - started
    assert answer == (ev.DECISION_DENIED, ev.DECISION_REASON_UNAVAILABLE)
    assert elapsed < time_remaining
    assert door.cache.lookups == 1
    assert await door.recorded_reasons() == [ev.DECISION_REASON_UNAVAILABLE]
    # Redis still hung, the view back: the next call leaves Redis alone, so the view has the time to answer.
    door.view.hang = False
    assert await door.unlock(time_remaining) == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
    assert door.cache.lookups == 1


async def test_redis_hung_and_the_view_down_deny_unavailable(door, own_redis):
    own_redis.freeze_component("redis")
    await door.view.close()  # every read of the embedded view now fails
    assert await door.unlock(1.0) == (ev.DECISION_DENIED, ev.DECISION_REASON_UNAVAILABLE)
    assert await door.recorded_reasons() == [ev.DECISION_REASON_UNAVAILABLE]
    # Asked for a revision, Unlock cannot say the view has it: a clear status, no answer.
    with pytest.raises(Unavailable):
        await door.unlock(1.0, min_revision=1)


async def test_a_deadline_too_short_for_redis_skips_it_without_pausing_it(door):
    # 30 ms leaves no lookup budget (50 ms are kept to answer): the embedded view answers alone.
    assert await door.unlock(0.03) == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
    assert door.cache.lookups == 0
    # The caller's short deadline was not Redis' fault: the next call uses Redis again.
    assert await door.unlock(5) == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED)
    assert door.cache.lookups == 1


class Context:
    """What the servicer asks of a gRPC call: its deadline, and how to end it with a status."""

    def __init__(self, time_remaining: float) -> None:
        self._remaining = time_remaining
        self.code = None

    def time_remaining(self) -> float:
        return self._remaining

    async def abort(self, code, message, trailing_metadata=()):
        self.code = code
        raise grpc.aio.AbortError(message)


@pytest.mark.parametrize("method", ["GetViewRevision", "WaitForRevision"])
async def test_revision_calls_answer_unavailable_when_the_view_is_down(door, method):
    await door.view.close()
    servicer, context = AccessServicer(door.service, 30), Context(1.0)
    request = (access_pb2.GetViewRevisionRequest() if method == "GetViewRevision"
               else access_pb2.WaitForRevisionRequest(revision=5, timeout=Duration(seconds=1)))
    with pytest.raises(grpc.aio.AbortError):
        await getattr(servicer, method)(request, context)
    assert context.code == grpc.StatusCode.UNAVAILABLE
