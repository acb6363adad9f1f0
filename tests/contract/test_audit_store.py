"""One contract for every AuditStore: once per event id, exact filters, a chain that exposes tampering."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest

from services.audit.domain import AuditRecord
from services.audit.ports import AuditQuery

BACKENDS = ["embedded"] + (["scylla"] if os.environ.get("LATCHKEY_SCYLLA_HOSTS") else [])


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    if request.param == "embedded":
        from services.audit.adapters.sqlite_store import SqliteAuditStore

        s = SqliteAuditStore(tmp_path / "audit.sqlite")
    else:
        from latchkit.scylla import ScyllaSettings
        from services.audit.adapters.scylla_store import ScyllaAuditStore, apply_schema

        base = ScyllaSettings.from_env()
        settings = base.with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
        await apply_schema(settings, replication_factor=1, retention_days=1)
        s = ScyllaAuditStore(settings, retention_days=1)
    await s.open()
    yield s
    await s.close()


def record(i: int, *, door="d1", user="u1", type_="access.unlock_decided", t_us: int | None = None) -> AuditRecord:
    t = t_us if t_us is not None else 1_700_000_000_000_000 + i * 1_000_000
    return AuditRecord(seq=0, event_id=str(uuid.uuid4()), type=type_, actor="spiffe://latchkey/door/d1",
                       action=type_.split(".")[1], user_id=user, door_id=door, credential_id="", outcome="GRANTED",
                       reason="GRANTED", revision=i, source_time_us=t, stored_time_us=t, envelope=f"e{i}".encode())


async def test_each_event_is_stored_once(store):
    batch = [record(i) for i in range(5)]
    assert await store.append(batch) == 5
    # Redelivery of the whole batch, and of part of it mixed with new ones.
    assert await store.append(batch) == 0
    assert await store.append([batch[2], record(9)]) == 1
    stored = await store.read(AuditQuery(), 0, 100)
    assert [r.event_id for r in stored] == [r.event_id for r in batch] + [stored[-1].event_id]


async def test_filters_and_time_range_are_exact_at_the_boundaries(store):
    base = 1_800_000_000_000_000
    rows = [record(0, t_us=base - 1), record(1, t_us=base), record(2, t_us=base + 10, door="d2"),
            record(3, t_us=base + 20, user="u2"), record(4, t_us=base + 30, type_="permissions.grant_changed")]
    await store.append(rows)
    window = await store.read(AuditQuery(start_us=base, end_us=base + 30), 0, 100)
    assert [r.event_id for r in window] == [rows[1].event_id, rows[2].event_id, rows[3].event_id]
    assert [r.event_id for r in await store.read(AuditQuery(door_id="d2"), 0, 100)] == [rows[2].event_id]
    assert [r.event_id for r in await store.read(AuditQuery(user_id="u2"), 0, 100)] == [rows[3].event_id]
    typed = await store.read(AuditQuery(types=("permissions.grant_changed",)), 0, 100)
    assert [r.event_id for r in typed] == [rows[4].event_id]


async def test_reads_resume_after_a_sequence(store):
    await store.append([record(i) for i in range(10)])
    first = await store.read(AuditQuery(), 0, 4)
    rest = await store.read(AuditQuery(), first[-1].seq, 100)
    everything = await store.read(AuditQuery(), 0, 100)
    assert first + rest == everything and len(everything) == 10
    assert await store.last_seq() == everything[-1].seq


async def test_chain_verifies_when_untouched(store):
    for i in range(3):
        await store.append([record(i * 10 + j) for j in range(4)])
    checked, broken = await store.verify(0, 0)
    assert (checked, broken) == (12, None)


async def test_parked_messages_keep_their_bytes(store):
    await store.park("DECISIONS", 7, b"\xff\x00garbage", "not an Envelope")
    await store.park("DECISIONS", 7, b"\xff\x00garbage", "not an Envelope")
    assert await store.parked() == [("DECISIONS", 7, b"\xff\x00garbage", "not an Envelope")]


# ---- tampering with the embedded store's file directly -----------------------------

@pytest.fixture
async def sqlite_store(tmp_path):
    from services.audit.adapters.sqlite_store import SqliteAuditStore

    s = SqliteAuditStore(tmp_path / "audit.sqlite")
    await s.open()
    await s.append([record(i) for i in range(10)])
    yield s, tmp_path / "audit.sqlite"
    await s.close()


def tamper(path, sql: str, *params) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, params)


async def test_an_edited_row_is_caught(sqlite_store):
    store, path = sqlite_store
    tamper(path, "UPDATE events SET outcome = 'GRANTED', reason = 'edited' WHERE seq = 4")
    _, broken = await store.verify(0, 0)
    assert (broken.kind, broken.position) == ("EDITED", 4)


async def test_a_deleted_row_is_caught(sqlite_store):
    store, path = sqlite_store
    tamper(path, "DELETE FROM events WHERE seq = 6")
    _, broken = await store.verify(0, 0)
    assert (broken.kind, broken.position) == ("MISSING", 7)


async def test_reordered_rows_are_caught(sqlite_store):
    store, path = sqlite_store
    # Swap rows 3 and 5 by their storage positions.
    tamper(path, "UPDATE events SET seq = -3 WHERE seq = 3")
    tamper(path, "UPDATE events SET seq = 3 WHERE seq = 5")
    tamper(path, "UPDATE events SET seq = 5 WHERE seq = -3")
    _, broken = await store.verify(0, 0)
    assert (broken.kind, broken.position) == ("REORDERED", 3)


async def test_verification_over_a_range_starts_from_the_previous_link(sqlite_store):
    store, path = sqlite_store
    rows = await store.read(AuditQuery(), 0, 100)
    checked, broken = await store.verify(rows[5].stored_time_us, rows[8].stored_time_us)
    assert (checked, broken) == (3, None)
    tamper(path, "UPDATE events SET door_id = 'other' WHERE seq = 2")
    # Outside the range: not seen; inside: caught.
    assert (await store.verify(rows[5].stored_time_us, 0))[1] is None
    assert (await store.verify(0, 0))[1].kind == "EDITED"


async def test_the_stream_position_is_recorded_with_the_write(store):
    assert await store.position("DECISIONS") == 0
    await store.append([record(1)], "DECISIONS", 41)
    await store.append([], "DECISIONS", 42)
    await store.append([record(2)], "PERMISSIONS", 7)
    assert (await store.position("DECISIONS"), await store.position("PERMISSIONS")) == (42, 7)


def test_the_spliced_stream_item_equals_the_protobuf_one():
    from latchkey.audit.v1 import audit_pb2
    from latchkey.events.v1 import events_pb2 as ev

    from latchkit import envelope
    from services.audit.records import encode_response, to_event, to_record

    env = envelope.build(ev.UnlockDecided(decision_id="d", door_id="door", decision=1, reason=1),
                         actor="spiffe://latchkey/door/door", aggregate_key="door/door")
    r = to_record(env, env.SerializeToString())
    expected = audit_pb2.AuditLogResponse(event=to_event(r), cursor="c-1")
    assert audit_pb2.AuditLogResponse.FromString(encode_response(r, "c-1")) == expected


def test_the_spliced_batch_equals_the_protobuf_one():
    from latchkey.audit.v1 import audit_pb2
    from latchkey.events.v1 import events_pb2 as ev

    from latchkit import envelope
    from services.audit.records import encode_batch, to_event, to_record

    envs = [envelope.build(ev.UnlockDecided(decision_id=f"d{i}", door_id="door", decision=1),
                           actor="spiffe://latchkey/door/door", aggregate_key="door/door") for i in range(3)]
    rows = [to_record(e, e.SerializeToString()) for e in envs]
    expected = audit_pb2.AuditLogResponse(events=[to_event(r) for r in rows], cursor="c-9")
    assert audit_pb2.AuditLogResponse.FromString(encode_batch(rows, "c-9")) == expected
