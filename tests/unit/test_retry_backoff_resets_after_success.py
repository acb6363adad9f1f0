"""The decision publisher and the audit ingest start over from the shortest wait after each success.

Both loops run for the life of the process, so a wait that is reset only when they return
never resets: an outage after an hour of work waited as long as the longest one before it.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from latchkey.events.v1 import events_pb2 as ev

from latchkit import bus, envelope
from latchkit.bus import DECISIONS_STREAM, BusSettings
from services.access import decisions
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.audit import ingest
from tests.flaky_broker import FlakyBroker, resume_after_second_outage

RESUME_LIMIT_S = 0.8
"""After the second outage ends: at most the waits 0.1 + 0.2 + 0.4 s plus scheduling; the old
loops waited out the 1.6 s they had reached in the first outage."""


@pytest.fixture
def broker(monkeypatch) -> FlakyBroker:
    broker = FlakyBroker()
    # Both loops connect through latchkit.bus's session.
    monkeypatch.setattr(bus, "connect", broker.connect)
    monkeypatch.setattr(bus, "ensure_streams", broker.ensure_streams)
    return broker


def decision() -> ev.Envelope:
    return envelope.build(ev.UnlockDecided(decision_id=str(uuid.uuid4()), door_id="door", decision=1),
                          actor="spiffe://latchkey/door/door", aggregate_key="door/door")


async def test_the_decision_publisher_resumes_quickly_after_a_second_outage(broker, tmp_path):
    publisher = decisions.DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                            BusSettings("nats://fake", 600), linger=0.0)
    task = asyncio.create_task(publisher.run_publisher())

    def work() -> str:
        event = decision()
        publisher.record(event)
        return event.event_id

    try:
        resumed = await resume_after_second_outage(broker, work, lambda key: key in broker.published_at)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.spool.close()
    assert resumed < RESUME_LIMIT_S


class MemoryAuditStore:
    def __init__(self) -> None:
        self.event_ids: set[str] = set()

    async def position(self, stream: str) -> int:
        return 0

    async def append(self, records, stream: str, position: int) -> int:
        self.event_ids.update(record.event_id for record in records)
        return len(records)

    async def park(self, stream: str, sequence: int, data: bytes, error: str) -> None:
        raise AssertionError(f"parked: {error}")


async def test_the_audit_ingest_resumes_quickly_after_a_second_outage(broker):
    store = MemoryAuditStore()
    consumer = ingest.Ingest(store, BusSettings("nats://fake", 600))
    task = asyncio.create_task(consumer._run_stream(DECISIONS_STREAM))

    def work() -> str:
        event = decision()
        broker.deliver(envelope.subject(event), event.SerializeToString())
        return event.event_id

    try:
        resumed = await resume_after_second_outage(broker, work, lambda key: key in store.event_ids)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert resumed < RESUME_LIMIT_S
