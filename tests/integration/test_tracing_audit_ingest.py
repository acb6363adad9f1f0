"""Audit ingest continues the trace a decision event carries in its JetStream headers.

Decision events published on a private stream of the test stack's NATS, each
under a producer span of its own; the ingest's `handle` stores what it fetched
in a span of the event's trace (one message) or linked to each (a batch).
"""

from __future__ import annotations

import uuid

import pytest
from latchkey.events.v1 import events_pb2 as ev

from latchkit import bus, envelope
from latchkit.bus import BusSettings
from services.audit.adapters.sqlite_store import SqliteAuditStore
from services.audit.ingest import Ingest


@pytest.fixture
def tracing_service() -> str:
    return "access"


@pytest.fixture
def stream(scratch_stream):
    return scratch_stream


@pytest.fixture
async def ingest(tmp_path, urls):
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    yield Ingest(store, BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
    await store.close()


async def publish_decisions(js, name: str, count: int) -> list[str]:
    """`count` decision events, each published under its own producer span; returns their trace ids."""
    trace_ids = []
    for _ in range(count):
        event = envelope.build(ev.UnlockDecided(decision_id=str(uuid.uuid4()), door_id="door", decision=1),
                               actor="test", aggregate_key="door")
        subject = f"{name.lower()}.door"
        with bus.publish_span(subject, {"Nats-Msg-Id": event.event_id}) as headers:
            trace_ids.append(headers["traceparent"].split("-")[1])
            await js.publish(subject, event.SerializeToString(), headers=headers)
    return trace_ids


async def fetch(js, name: str, count: int) -> list:
    sub = await js.pull_subscribe(f"{name.lower()}.>", durable=f"c{uuid.uuid4().hex[:8]}", stream=name)
    msgs: list = []
    while len(msgs) < count:
        msgs += await sub.fetch(count - len(msgs), timeout=5)
    return msgs


async def test_ingesting_one_event_is_a_span_in_the_events_trace(collector, stream, ingest):
    js, name = stream
    # One event, published in a trace of its own; the ingest stores it.
    (trace_id,) = await publish_decisions(js, name, 1)
    await ingest.handle(name, await fetch(js, name, 1))
    # The ingest span is a child of the publish span, in the same trace.
    spans = await collector.wait_for(lambda s: any(x.name.startswith("audit.ingest") for x in s), "the ingest span")
    stored = next(s for s in spans if s.name.startswith("audit.ingest"))
    publish = next(s for s in spans if s.kind == "PRODUCER")
    assert stored.kind == "CONSUMER"
    assert stored.trace_id == trace_id and stored.parent_span_id == publish.span_id


async def test_ingesting_a_batch_links_the_span_to_every_events_trace(collector, stream, ingest):
    js, name = stream
    # Three events in three traces, stored as one batch.
    trace_ids = await publish_decisions(js, name, 3)
    await ingest.handle(name, await fetch(js, name, 3))
    # One ingest span for the batch, linked to each event's publish span.
    spans = await collector.wait_for(lambda s: any(x.name.startswith("audit.ingest") for x in s), "the ingest span")
    (stored,) = [s for s in spans if s.name.startswith("audit.ingest")]
    publishes = {(s.trace_id, s.span_id) for s in spans if s.kind == "PRODUCER"}
    assert set(stored.links) == publishes and {t for t, _ in stored.links} == set(trace_ids)
    assert stored.attributes["messaging.batch.message_count"] == 3
    assert stored.trace_id not in trace_ids
