"""The decision spool: events decided while NATS is down survive a restart of the process and arrive in order."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from latchkey.events.v1 import events_pb2 as ev
from nats.js.api import ConsumerConfig, DeliverPolicy

from latchkit import envelope
from latchkit.bus import DECISIONS_STREAM, BusSettings, ensure_streams
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionPublisher
from tests.waiting import until


def decision(door: str) -> ev.Envelope:
    return envelope.build(ev.UnlockDecided(decision_id=str(uuid.uuid4()), door_id=door, decision=1),
                          actor="spiffe://latchkey/door/x", aggregate_key=f"door/{door}")


def record_all(publisher: DecisionPublisher, events: list[ev.Envelope]) -> None:
    """Every other event as Unlock records it: encoded later, by the publisher or the spiller."""
    for i, e in enumerate(events):
        if i % 2:
            publisher.record_deferred(e.event_id, envelope.subject(e), ev.Envelope.SerializeToString, (e,))
        else:
            publisher.record(e)


async def stored_decisions(url: str, door: str, messages: list | None = None) -> list[str]:
    """The decision ids stored for `door`, in stream order; `messages` collects the messages that held them."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().pull_subscribe("latchkey.decisions.>", stream=DECISIONS_STREAM,
                                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        ids = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except TimeoutError:
                return ids
            for m in msgs:
                # Lone events or batches of them: the order inside a batch is the order decided.
                for raw in envelope.unpack(m.subject, m.data):
                    decided = envelope.parse(raw).unlock_decided
                    if decided.door_id == door:
                        ids.append(decided.decision_id)
                        if messages is not None and (not messages or messages[-1] is not m):
                            messages.append(m)
    finally:
        await nc.close()


async def test_spooled_decisions_survive_a_restart_and_flow_in_order(stack, urls, tmp_path):
    door = uuid.uuid4().hex
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    stack.stop_component("nats")
    try:
        # NATS is down: decisions are recorded, then spilled to the spool on disk.
        first = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), bus, spill_after=0.0)
        events = [decision(door) for _ in range(50)]
        record_all(first, events)
        await first.spill()
        assert await first.spool.count() == 50
        # The process dies (no graceful shutdown): nothing in memory, the file stays.
        await first.spool.close()
    finally:
        stack.start_component("nats")
    # A new process with the same spool publishes everything, in order, once.
    second = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), bus)
    task = asyncio.create_task(second.run_publisher())
    try:
        async def drained():
            return await second.spool.count() == 0
        await until(drained, "the spool to drain")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await stored_decisions(urls.nats_url, door) == [e.unlock_decided.decision_id for e in events]


async def test_decisions_waiting_together_travel_in_one_message(urls, tmp_path):
    door = uuid.uuid4().hex
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                  BusSettings(url=urls.nats_url, duplicate_window_s=600.0), per_message=8)
    events = [decision(door) for _ in range(20)]
    record_all(publisher, events)
    task = asyncio.create_task(publisher.run_publisher())
    try:
        async def stored():
            return len(await stored_decisions(urls.nats_url, door)) == len(events)
        await until(stored, "the decisions in the stream")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    messages: list = []
    assert await stored_decisions(urls.nats_url, door, messages) == [e.unlock_decided.decision_id for e in events]
    # 20 decisions at most 8 to a message: 3 messages, not 20.
    assert [m.subject for m in messages] == [envelope.BATCH_SUBJECT] * 3


async def test_decisions_in_memory_never_overtake_spooled_ones(urls, tmp_path):
    """The spiller may move the oldest decisions to the spool at any await, e.g. while the
    publisher lingers for company; what is still in memory must then wait its turn."""
    door = uuid.uuid4().hex
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"), bus)
    nc = await nats.connect(urls.nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, bus)
        first, second = decision(door), decision(door)
        publisher.record(first)
        await publisher.spill(everything=True)  # as the spiller would, mid-linger
        publisher.record(second)
        await publisher.publish_pending(js)  # must not send `second` ahead of the spool
        await publisher.drain_spool(js)
        await publisher.publish_pending(js)
    finally:
        await nc.close()
        await publisher.spool.close()
    assert await stored_decisions(urls.nats_url, door) == [first.unlock_decided.decision_id,
                                                          second.unlock_decided.decision_id]


async def test_a_graceful_close_sends_what_is_waiting_instead_of_spooling_it(urls, tmp_path):
    door = uuid.uuid4().hex
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                  BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
    events = [decision(door) for _ in range(5)]
    for e in events:
        publisher.record(e)  # decided, not yet sent: no publisher task ever ran
    await publisher.close()
    assert await stored_decisions(urls.nats_url, door) == [e.unlock_decided.decision_id for e in events]
    reopened = SqliteDecisionSpool(tmp_path / "spool.sqlite")
    assert await reopened.count() == 0
    await reopened.close()


async def test_a_cancelled_server_task_still_sends_what_is_waiting_as_it_closes(urls, tmp_path):
    """Shutdown clean-up may run in a task that was cancelled: it must still send (or spool)."""
    door = uuid.uuid4().hex
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                  BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
    events = [decision(door) for _ in range(3)]
    serving = asyncio.Event()

    async def serve() -> None:
        record_all(publisher, events)
        try:
            serving.set()
            await asyncio.get_running_loop().create_future()  # serves until cancelled
        finally:
            await publisher.close()

    task = asyncio.create_task(serve())
    await serving.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored_decisions(urls.nats_url, door) == [e.unlock_decided.decision_id for e in events]
