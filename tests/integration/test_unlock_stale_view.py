"""min_revision the view cannot reach: over gRPC, a DENIED with reason STALE_VIEW within the
caller's deadline (waiting at most 1 s), recorded in the DECISIONS stream like every answer."""

from __future__ import annotations

import time
import uuid

import nats
import pytest
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from nats.js.api import ConsumerConfig, DeliverPolicy

from latchkit import authz, envelope, server
from latchkit.bus import DECISIONS_STREAM, BusSettings
from latchkit.server import ServiceSpec
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.grpc_api import AccessServicer
from services.access.ports import ViewBatch
from services.access.projector import Projector
from services.access.service import UnlockService
from services.access.settings import AccessSettings
from tests.integration.conftest import aio_channel, server_settings


def test_the_default_wait_for_min_revision_is_one_second(monkeypatch):
    monkeypatch.delenv("LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS", raising=False)
    assert AccessSettings.from_env().min_revision_wait_seconds == 1.0


async def reasons_recorded(nats_url: str, door: str, count: int) -> dict[str, int]:
    """decision id -> reason of the decisions stored for `door` (waits, bounded, for `count` of them)."""
    nc = await nats.connect(nats_url)
    found: dict[str, int] = {}
    try:
        sub = await nc.jetstream().pull_subscribe(envelope.decision_subject(door), stream=DECISIONS_STREAM,
                                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        sub_batch = await nc.jetstream().pull_subscribe("latchkey.decisions.batch", stream=DECISIONS_STREAM,
                                                        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        deadline = time.monotonic() + 10
        while len(found) < count and time.monotonic() < deadline:
            for s in (sub, sub_batch):
                try:
                    msgs = await s.fetch(100, timeout=0.2)
                except TimeoutError:
                    continue
                for m in msgs:
                    for raw in envelope.unpack(m.subject, m.data):
                        decided = envelope.parse(raw).unlock_decided
                        if decided.door_id == door:
                            found[decided.decision_id] = decided.reason
        return found
    finally:
        await nc.close()


@pytest.mark.parametrize("waits_on", ["projector", "shared view"])
async def test_an_unreachable_min_revision_is_a_recorded_stale_view_denial(urls, pki, tmp_path, waits_on):
    # The view is at revision 2 and nothing moves it: min_revision 100 cannot be shown.
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    await view.apply(ViewBatch(watermark=2))
    cache = RedisUnlockCache(urls.redis_url, 60, 5, instance=uuid.uuid4().hex)
    projector = None
    if waits_on == "projector":
        projector = Projector(view, cache, bus, SqliteRedisBacklog(tmp_path / "backlog.sqlite"))
        projector.watermark = 2
    decisions = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), bus)
    service = UnlockService(view, cache, decisions, b"k" * 32, projector=projector, min_revision_wait=1.0,
                            credential_throttle=DenialThrottle(60, 100), door_throttle=DenialThrottle(60, 100))

    def register(grpc_server) -> list[str]:
        access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(service, 30), grpc_server)
        return [access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name]

    running = await server.start(server_settings(pki.tls("access")), ServiceSpec(
        name="access", register=register, policy=authz.allowed,
        background=[decisions.run_spiller, decisions.run_publisher]))
    door = f"stale-{uuid.uuid4().hex[:8]}"
    try:
        async with aio_channel(running.port, pki.issue("door", door)) as channel:
            stub = access_pb2_grpc.AccessServiceStub(channel)
            answers = []
            # A generous deadline: the wait stops at 1 s.
            # A deadline shorter than that: the wait stops in time to answer (no DEADLINE_EXCEEDED).
            for deadline, longest in ((5.0, 1.3), (0.4, 0.4)):
                started = time.monotonic()
                answer = await stub.Unlock(access_pb2.UnlockRequest(door_id=door, user_id="someone",
                                                                    request_id=uuid.uuid4().hex, min_revision=100),
                                           timeout=deadline)
                assert time.monotonic() - started < longest
                assert (answer.decision, answer.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW)
                assert answer.view_revision == 2
                answers.append(answer.decision_id)
        # Both are in the audit trail's source, the DECISIONS stream, as STALE_VIEW denials.
        recorded = await reasons_recorded(urls.nats_url, door, len(answers))
        assert recorded == {decision_id: ev.DECISION_REASON_STALE_VIEW for decision_id in answers}
    finally:
        await running.stop(0.5)
        await decisions.close()
        await cache.close()
        await view.close()
