"""With no local cache, the projector's process ends a change's trace at the first Unlock answered from it.

Real NATS (a stream of this test's own, so the shared PERMISSIONS stream is
left alone), Redis and the embedded view; spans go by OTLP to a real receiver.
The change is published in a producer span of the test's, as the relay
publishes it; the projector applies the fetched message; Unlock is called as
the servicer calls it, inside a server span.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev
from nats.js.api import StreamConfig

from latchkit import bus, envelope, tracing
from latchkit.bus import BusSettings
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.projector import Projector
from services.access.service import UnlockService

KEY = b"k" * 32


@pytest.fixture
def tracing_service() -> str:
    return "access"


@pytest.fixture
async def js(urls):
    nc = await nats.connect(urls.nats_url)
    stream = f"TRACING_{uuid.uuid4().hex[:12].upper()}"
    subject = f"tracing-test.{stream.lower()}"
    context = nc.jetstream()
    await context.add_stream(StreamConfig(name=stream, subjects=[subject]))
    yield context, subject
    await context.delete_stream(stream)
    await nc.close()


def hex_ids(span) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_without_a_local_cache_the_first_unlock_from_a_change_joins_its_trace(collector, js, urls, tmp_path):
    context, subject = js
    door, user = str(uuid.uuid4()), str(uuid.uuid4())
    bus_settings = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    cache = RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5, instance=uuid.uuid4().hex)
    projector = Projector(view, cache, bus_settings, SqliteRedisBacklog(tmp_path / "backlog.sqlite"),
                          instance=uuid.uuid4().hex)
    service = UnlockService(view, cache, DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                                           bus_settings, durability="async"),
                            KEY, projector=projector, min_revision_wait=0.05, local=None,
                            credential_throttle=DenialThrottle(60, 1000), door_throttle=DenialThrottle(60, 1000))
    principal = Principal(uri=f"spiffe://latchkey/door/{door}", kind="door", name=door)

    async def unlock() -> tuple[int, int, tuple[str, str]]:
        with tracing.span("Unlock", kind="SERVER") as span:
            answer = await service.unlock(principal, access_pb2.UnlockRequest(
                door_id=door, user_id=user, request_id=uuid.uuid4().hex), 5)
        return answer.decision, answer.view_revision, hex_ids(span)

    try:
        granted = ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC",
                                   rules=[ev.AccessRule(grant_id="g")])
        change = envelope.build(granted, actor="test", aggregate_key=f"access/{door}/{user}", aggregate_version=1,
                                revision=1)
        with bus.publish_span(subject, {"Nats-Msg-Id": change.event_id}) as headers:
            await context.publish(subject, change.SerializeToString(), headers=headers)
        # The message's traceparent names the publish span.
        _, *ids, _ = headers["traceparent"].split("-")
        change_ids = tuple(ids)

        # Before the change is applied: an answer from revision 0 does not count.
        assert (await unlock())[:2] == (ev.DECISION_DENIED, 0)
        sub = await context.pull_subscribe(subject, durable=None)
        msgs = await sub.fetch(1, timeout=5)
        await projector.apply(msgs, {})
        assert projector.watermark == 1

        # The first answer from revision 1 ends the change's trace; the next one adds nothing.
        decision, revision, first_unlock = await unlock()
        assert (decision, revision) == (ev.DECISION_GRANTED, 1)
        assert (await unlock())[:2] == (ev.DECISION_GRANTED, 1)

        await asyncio.to_thread(tracing.force_flush)  # the receiver answers in this event loop
        spans = await collector.wait_for(
            lambda s: any(x.name == "access.first_unlock" for x in s) and any(x.name == "access.project" for x in s),
            "the projector's span and the first Unlock's")
        (first,) = [s for s in spans if s.name == "access.first_unlock"]
        (project,) = [s for s in spans if s.name == "access.project"]
        # Both under the change's publish span; the first Unlock links to its own server span.
        assert (first.trace_id, first.parent_span_id) == change_ids
        assert (project.trace_id, project.parent_span_id, project.kind) == (*change_ids, "CONSUMER")
        assert first.links == (first_unlock,)
        assert first.attributes == {"latchkey.view_revision": 1, "latchkey.event_revision": 1}
    finally:
        await cache.close()
        await view.close()
