"""Unlock's decision events in its trace: a JetStream message per decision (or per batch) on the test stack's NATS.

The publisher's rounds are driven by hand (`publish_pending`), so a lone decision
and a batch of them each become one message. Spans go by OTLP to a real receiver;
the messages are read back from the DECISIONS stream.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from latchkit import tracing
from latchkit.bus import BusSettings, ensure_streams
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionPublisher
from tests.integration.test_decision_durability import record
from tests.integration.test_decision_spool import stored_decisions


@pytest.fixture
def tracing_service() -> str:
    return "access"


@pytest.fixture
async def publisher(urls, tmp_path):
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    made = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), bus)
    nc = await nats.connect(urls.nats_url)
    js = nc.jetstream()
    await ensure_streams(js, bus)
    yield made, js
    await nc.close()
    await made.spool.close()


async def headers_of_messages(url: str, door: str) -> list[dict]:
    messages: list = []
    await stored_decisions(url, door, messages)
    return [dict(m.headers or {}) for m in messages]


def hex_ids(span) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_with_tracing_off_decision_messages_carry_no_traceparent(tracing_off, publisher, urls):
    decisions, js = publisher
    door = uuid.uuid4().hex
    record(decisions, door)
    await decisions.publish_pending(js)  # a lone decision: one Envelope
    for _ in range(3):
        record(decisions, door)
    await decisions.publish_pending(js)  # three: one EnvelopeBatch
    headers = await headers_of_messages(urls.nats_url, door)
    assert len(headers) == 2
    assert all("traceparent" not in h and "Nats-Msg-Id" in h for h in headers)
    assert decisions.traces_kept == 0


async def test_a_lone_decision_is_published_in_its_unlocks_trace(collector, publisher, urls):
    decisions, js = publisher
    door = uuid.uuid4().hex
    with tracing.span("Unlock", kind="SERVER") as unlock:
        record(decisions, door)
    await decisions.publish_pending(js)
    (headers,) = await headers_of_messages(urls.nats_url, door)
    await asyncio.to_thread(tracing.force_flush)  # the receiver answers in this event loop
    spans = await collector.wait_for(lambda s: any(x.kind == "PRODUCER" for x in s), "the decision's publish span")
    (publish,) = [s for s in spans if s.kind == "PRODUCER"]
    # A child of the Unlock's span, and the message's traceparent names the publish span.
    assert (publish.trace_id, publish.parent_span_id) == hex_ids(unlock)
    assert headers["traceparent"].split("-")[1:3] == [publish.trace_id, publish.span_id]


async def test_a_batch_of_decisions_is_published_linked_to_each_unlocks_trace(collector, publisher, urls):
    decisions, js = publisher
    door = uuid.uuid4().hex
    unlocks = []
    for _ in range(3):
        with tracing.span("Unlock", kind="SERVER") as unlock:
            record(decisions, door)
        unlocks.append(hex_ids(unlock))
    await decisions.publish_pending(js)
    (headers,) = await headers_of_messages(urls.nats_url, door)
    await asyncio.to_thread(tracing.force_flush)  # the receiver answers in this event loop
    spans = await collector.wait_for(lambda s: any(x.kind == "PRODUCER" for x in s), "the batch's publish span")
    (publish,) = [s for s in spans if s.kind == "PRODUCER"]
    # One message, one span: it cannot have three parents, so it links to each Unlock.
    assert sorted(publish.links) == sorted(unlocks)
    assert publish.trace_id not in {trace for trace, _ in unlocks}
    assert headers["traceparent"].split("-")[1:3] == [publish.trace_id, publish.span_id]
    assert decisions.traces_kept == 0
