"""Acked durability (the default): when a caller's wait returns, its decision survives a crash.

A "crash" here is the publisher's tasks cancelled with no `close()`: whatever was only in
memory is gone, as with SIGKILL. Every decision whose wait returned must then be in the
DECISIONS stream or in the spool file on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest

from latchkit import envelope
from latchkit.bus import BusSettings
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionNotDurable, DecisionPublisher, wait_durable
from services.access.service import encode_decision
from tests.integration.test_decision_spool import stored_decisions


def record(publisher: DecisionPublisher, door: str) -> tuple[str, asyncio.Future | None]:
    """One decision recorded as Unlock records it; returns its id and the future to wait on."""
    decision_id = str(uuid.uuid4())
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    group = publisher.record_deferred(decision_id, envelope.decision_subject(door), encode_decision, (
        decision_id, "spiffe://latchkey/door/x", door, "user", "", "", 1, 1, 1, seconds, nanos, 1000, None))
    return decision_id, group


async def answer(publisher: DecisionPublisher, door: str, answered: list[str], limit_s: float = 2.0) -> None:
    """What Unlock does: record, wait for durability, then (here: note that it) answer."""
    decision_id, group = record(publisher, door)
    await wait_durable(group, asyncio.get_running_loop().time() + limit_s)
    answered.append(decision_id)


def crash(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()


def spooled_ids(path) -> list[str]:
    """What the spool file holds, read by another connection (what a restarted process finds)."""
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM spool ORDER BY seq")]


async def test_every_answered_decision_is_in_the_stream_when_the_process_dies(urls, tmp_path):
    door = uuid.uuid4().hex
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                  BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
    tasks = [asyncio.create_task(publisher.run_publisher()), asyncio.create_task(publisher.run_spiller())]
    answered: list[str] = []
    # 200 callers, 32 at a time, as Unlock's concurrent calls: each answers once its decision is durable.
    for _ in range(200 // 32 + 1):
        await asyncio.gather(*(answer(publisher, door, answered) for _ in range(32)))
    # The process dies the moment the last answer left: no close(), memory is lost.
    crash(tasks)
    await asyncio.gather(*tasks, return_exceptions=True)
    messages: list = []
    stored = await stored_decisions(urls.nats_url, door, messages)
    assert set(answered) <= set(stored) | set(spooled_ids(tmp_path / "spool.sqlite"))
    # Group commit: concurrent callers share messages (and PubAcks), not one per decision.
    assert len(messages) < len(answered) / 4
    await publisher.spool.close()


async def test_with_nats_down_an_answered_decision_is_in_the_spool_file(stack, urls, tmp_path):
    door = uuid.uuid4().hex
    spool_path = tmp_path / "spool.sqlite"
    publisher = DecisionPublisher(SqliteDecisionSpool(spool_path),
                                  BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
    stack.stop_component("nats")
    tasks = [asyncio.create_task(publisher.run_publisher()), asyncio.create_task(publisher.run_spiller())]
    try:
        # NATS is down: the answers wait for the spool (spill_after, 0.1 s, plus an fsync), no longer.
        answered: list[str] = []
        started = time.monotonic()
        await asyncio.gather(*(answer(publisher, door, answered) for _ in range(10)))
        assert time.monotonic() - started < 1.0
        crash(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        # Nothing in the stream: every answered decision is on disk.
        assert set(answered) <= set(spooled_ids(spool_path))
    finally:
        crash(tasks)
        await publisher.spool.close()
        stack.start_component("nats")


class BrokenSpool(SqliteDecisionSpool):
    """A spool whose every write fails (a full disk)."""

    def _append(self, rows):
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_decision_that_cannot_be_made_durable_times_out_at_the_deadline(tmp_path):
    # No NATS at this address and a spool that cannot write: nothing can make the event durable.
    publisher = DecisionPublisher(BrokenSpool(tmp_path / "spool.sqlite"), BusSettings("nats://127.0.0.1:1", 600))
    tasks = [asyncio.create_task(publisher.run_publisher()), asyncio.create_task(publisher.run_spiller())]
    try:
        _, group = record(publisher, "door")
        started = time.monotonic()
        with pytest.raises(DecisionNotDurable):
            await wait_durable(group, asyncio.get_running_loop().time() + 0.3)
        assert 0.25 < time.monotonic() - started < 0.6
        # The waiter's timeout did not cancel the shared future: the event is still waiting.
        assert not group.done()
    finally:
        crash(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_async_mode_answers_without_waiting(tmp_path):
    publisher = DecisionPublisher(SqliteDecisionSpool(tmp_path / "spool.sqlite"),
                                  BusSettings("nats://127.0.0.1:1", 600), durability="async")
    _, group = record(publisher, "door")
    assert group is None
    assert publisher.recorded_so_far() is None
