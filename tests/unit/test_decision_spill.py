"""Spilling decisions to the spool: a failed write loses nothing."""

from __future__ import annotations

import sqlite3

import pytest
from latchkey.events.v1 import events_pb2 as ev

from latchkit import envelope
from latchkit.bus import BusSettings
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionPublisher


class FullDisk(SqliteDecisionSpool):
    """The real SQLite spool, whose next write fails as on a full disk (once)."""

    fail_next = True

    def _append(self, rows):
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        super()._append(rows)


async def test_events_stay_in_memory_when_the_spool_write_fails(tmp_path):
    publisher = DecisionPublisher(FullDisk(tmp_path / "spool.sqlite"), BusSettings("nats://127.0.0.1:1", 600),
                                  spill_after=0.0)
    events = [envelope.build(ev.UnlockDecided(decision_id=f"d{i}", door_id="door", decision=1), actor="a",
                             aggregate_key="door/door", event_id=f"d{i}") for i in range(6)]
    for i, e in enumerate(events):
        if i % 2:
            publisher.record_deferred(e.event_id, envelope.subject(e), ev.Envelope.SerializeToString, (e,))
        else:
            publisher.record(e)
    with pytest.raises(sqlite3.OperationalError):
        await publisher.spill()
    await publisher.spill()  # the retry writes all of them, in order
    rows = await publisher.spool.oldest(100)
    assert [event_id for _, event_id, _, _ in rows] == [e.event_id for e in events]
    assert [envelope.parse(payload) for _, _, _, payload in rows] == events
    await publisher.spool.close()
