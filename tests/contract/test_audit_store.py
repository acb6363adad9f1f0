"""One contract for every AuditStore: once per event id, exact filters, a chain that exposes tampering.

Both legs always run: the embedded (SQLite) store and the CQL store against
the test run's engine (`cql_settings`). Times are relative to now, so they
are always inside the CQL store's retention window.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import replace

import pytest

from services.audit.domain import AuditRecord
from services.audit.ports import AuditQuery, AuditWriterFenced

BACKENDS = ["embedded", "scylla"]
RETENTION_DAYS = 30
DAY_US = 86_400_000_000
NOW_US = time.time_ns() // 1000


class Stores:
    """Opens stores of one backend on one database (a file, a keyspace); closes them at the end."""

    def __init__(self, backend: str, tmp_path, request) -> None:
        self.backend = backend
        self.path = tmp_path / "audit.sqlite"
        self.settings = None
        if backend == "scylla":
            settings = request.getfixturevalue("cql_settings").with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
            # A shared test engine can be slow; a timeout here is noise, not a finding.
            self.settings = replace(settings, request_timeout=max(settings.request_timeout, 10.0))
        self.opened: list = []

    async def open(self, clock=None):
        if self.backend == "embedded":
            from services.audit.adapters.sqlite_store import SqliteAuditStore

            s = SqliteAuditStore(self.path)
        else:
            from services.audit.adapters.scylla_store import ScyllaAuditStore, apply_schema

            if not self.opened:
                await apply_schema(self.settings, replication_factor=1, retention_days=RETENTION_DAYS)
            s = ScyllaAuditStore(self.settings, RETENTION_DAYS, clock=clock)
        await s.open()
        self.opened.append(s)
        return s

    async def close(self) -> None:
        for s in self.opened:
            await s.close()


@pytest.fixture(params=BACKENDS)
async def stores(request, tmp_path):
    s = Stores(request.param, tmp_path, request)
    yield s
    await s.close()


@pytest.fixture
async def store(stores):
    return await stores.open()


@pytest.fixture(params=["scylla"])
async def cql_stores(request, tmp_path, cql_settings):
    """The CQL store only: fencing, crashes and expiry are its own concerns."""
    s = Stores(request.param, tmp_path, request)
    yield s
    await s.close()


def record(i: int, *, door="d1", user="u1", type_="access.unlock_decided", t_us: int | None = None,
           stored_us: int | None = None) -> AuditRecord:
    t = t_us if t_us is not None else NOW_US - 3_600_000_000 + i * 1_000_000
    return AuditRecord(seq=0, event_id=str(uuid.uuid4()), type=type_, actor="spiffe://latchkey/door/d1",
                       action=type_.split(".")[1], user_id=user, door_id=door, credential_id="", outcome="GRANTED",
                       reason="GRANTED", revision=i, source_time_us=t,
                       stored_time_us=stored_us if stored_us is not None else t, envelope=f"e{i}".encode())


def ids(records) -> list[str]:
    return [r.event_id for r in records]


async def test_each_event_is_stored_once(store):
    batch = [record(i) for i in range(5)]
    assert await store.append(batch) == 5
    # Redelivery of the whole batch, and of part of it mixed with new ones.
    assert await store.append(batch) == 0
    assert await store.append([batch[2], record(9)]) == 1
    stored = await store.read(AuditQuery(), 0, 100)
    assert [r.event_id for r in stored] == [r.event_id for r in batch] + [stored[-1].event_id]
    assert len(stored) == 6


async def test_filters_and_time_range_are_exact_at_the_boundaries(store):
    base = NOW_US - 600_000_000
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


# ---- reads: every match, by source time -----------------------------------------

async def test_a_filter_never_cuts_a_read_short(store):
    # 1,100 events that the filters reject, then the few they want, all on one day.
    for start in range(0, 1100, 550):
        await store.append([record(i, type_="permissions.grant_changed") for i in range(start, start + 550)])
    wanted = [record(2000 + i) for i in range(3)]
    await store.append(wanted)
    # Every matching row comes back, whether the filter is served by the day's rows,
    # the door's or the user's.
    for query in (AuditQuery(types=("access.unlock_decided",)),
                  AuditQuery(door_id="d1", types=("access.unlock_decided",)),
                  AuditQuery(user_id="u1", types=("access.unlock_decided",))):
        assert ids(await store.read(query, 0, 100)) == ids(wanted)


async def test_time_range_is_on_source_time_whatever_day_the_event_was_stored(store):
    # A decision spooled at a door for three days, and one from a door whose clock runs two days ahead.
    late = record(1, t_us=NOW_US - 3 * DAY_US, stored_us=NOW_US - 60_000_000)
    ahead = record(2, t_us=NOW_US + 2 * DAY_US, stored_us=NOW_US - 50_000_000)
    await store.append([record(0), late, ahead])
    assert ids(await store.read(AuditQuery(start_us=late.source_time_us - 1, end_us=late.source_time_us + 1),
                                0, 100)) == [late.event_id]
    assert ids(await store.read(AuditQuery(start_us=ahead.source_time_us), 0, 100)) == [ahead.event_id]
    assert ids(await store.read(AuditQuery(end_us=NOW_US - DAY_US), 0, 100)) == [late.event_id]


# ---- the clock: sequences and partitions -----------------------------------------

async def test_a_clock_stepping_back_across_midnight_never_reorders_the_log(stores):
    midnight = NOW_US // DAY_US * DAY_US
    now = [midnight + 1_000_000]
    store = await stores.open(clock=lambda: now[0])
    # Stored one second after midnight; then the clock steps back two seconds, to the day before.
    after_midnight = [record(i, stored_us=now[0]) for i in range(3)]
    await store.append(after_midnight)
    now[0] = midnight - 1_000_000
    stepped_back = [record(10 + i, stored_us=now[0]) for i in range(3)]
    await store.append(stepped_back)
    everything = await store.read(AuditQuery(), 0, 100)
    assert ids(everything) == ids(after_midnight + stepped_back)
    assert [r.seq for r in everything] == sorted(r.seq for r in everything)
    # A cursor taken after the first write sees the later ones.
    assert ids(await store.read(AuditQuery(), everything[2].seq, 100)) == ids(stepped_back)
    assert await store.verify(0, 0) == (6, None)


# ---- verify: the previous link, however far back ----------------------------------

async def test_verify_finds_the_previous_link_across_quiet_days(stores):
    now = [NOW_US - 3 * DAY_US]
    store = await stores.open(clock=lambda: now[0])
    # Events three days ago, then nothing until today.
    await store.append([record(i, stored_us=now[0] + i) for i in range(4)])
    now[0] = NOW_US
    today = [record(10 + i, stored_us=NOW_US + i) for i in range(3)]
    await store.append(today)
    assert await store.verify(NOW_US - DAY_US // 2, 0) == (3, None)
    assert await store.verify(0, 0) == (7, None)


async def test_an_expired_chain_head_is_not_tampering_but_a_hole_is(cql_stores):
    store = await cql_stores.open()
    await store.append([record(i) for i in range(10)])
    rows = await store.read(AuditQuery(), 0, 100)
    delete = store.session.prepare(f"DELETE FROM {store.settings.keyspace}.audit_events "
                                   "WHERE part = ? AND seq = ? AND epoch = ?")

    def drop(r) -> None:
        from services.audit.adapters.scylla_store import part_of

        store.session.execute(delete, (part_of(r.seq), r.seq, store.epoch))

    # The TTL takes the oldest rows first: what survives still verifies.
    for r in rows[:3]:
        drop(r)
    assert await store.verify(0, 0) == (7, None)
    # A row gone from the middle is a break.
    drop(rows[6])
    _, broken = await store.verify(0, 0)
    assert (broken.kind, broken.position) == ("MISSING", rows[7].seq)


# ---- one writer: the fence ------------------------------------------------------------

async def test_a_second_writer_fences_out_the_first(cql_stores):
    first = await cql_stores.open()
    before = [record(i) for i in range(3)]
    await first.append(before)
    stored_before = await first.read(AuditQuery(), 0, 100)
    # A second writer opens the same keyspace (a rolling update, a split brain).
    second = await cql_stores.open()
    with pytest.raises(AuditWriterFenced):
        await first.append([record(10 + i) for i in range(3)])
    # Fenced for good, even for an append with nothing new.
    with pytest.raises(AuditWriterFenced):
        await first.append([], "DECISIONS", 99)
    after = [record(20 + i) for i in range(3)]
    assert await second.append(after, "DECISIONS", 5) == 3
    everything = await second.read(AuditQuery(), 0, 100)
    assert everything[:3] == stored_before
    assert ids(everything) == ids(before + after)
    assert await second.verify(0, 0) == (6, None)
    assert await second.position("DECISIONS") == 5


async def test_a_failed_append_leaves_no_hole_and_no_trace(cql_stores, monkeypatch):
    store = await cql_stores.open()
    await store.append([record(i) for i in range(3)])
    # The rows of this append land, but the process dies before the commit.
    lost = [record(10 + i) for i in range(3)]

    async def crash(*args):
        raise ConnectionError("the process died here")

    with monkeypatch.context() as m:
        m.setattr(store, "_commit", crash)
        with pytest.raises(ConnectionError):
            await store.append(lost)
    assert len(await store.read(AuditQuery(), 0, 100)) == 3
    # The same writer goes on (the redelivered events are new to it), then a new one after a restart.
    assert await store.append(lost) == 3
    restarted = await cql_stores.open()
    await restarted.append([record(20)])
    assert len(await restarted.read(AuditQuery(), 0, 100)) == 7
    assert await restarted.verify(0, 0) == (7, None)


async def test_rows_spread_over_bounded_partitions(cql_stores, monkeypatch):
    from services.audit.adapters import scylla_store

    monkeypatch.setattr(scylla_store, "PART_BITS", 3)
    store = await cql_stores.open()
    written = [record(i, door="d9" if i % 5 == 0 else "d1") for i in range(30)]
    for start in range(0, 30, 7):
        await store.append(written[start:start + 7])
    parts = {row[0] for row in store.session.execute(
        f"SELECT DISTINCT part FROM {store.settings.keyspace}.audit_events")}
    assert len(parts) >= 4
    # Reads cross the partitions in order, in pages of any size, and the chain verifies.
    first = await store.read(AuditQuery(), 0, 11)
    rest = await store.read(AuditQuery(), first[-1].seq, 100)
    assert ids(first + rest) == ids(written)
    assert ids(await store.read(AuditQuery(door_id="d9"), 0, 100)) == ids(written[::5])
    assert await store.verify(written[12].stored_time_us, 0) == (18, None)


async def test_a_commit_whose_answer_is_lost_is_settled_not_repeated(cql_stores, monkeypatch):
    from cassandra import OperationTimedOut

    from services.audit.adapters import scylla_store

    store = await cql_stores.open()
    await store.append([record(i) for i in range(2)])
    real_execute = scylla_store.execute

    async def lost_reply(session, statement, params=None):
        result = await real_execute(session, statement, params)
        if statement is store.s["commit"]:
            raise OperationTimedOut(errors={}, last_host="engine")
        return result

    # The commit is applied but its answer never arrives: the append settles it and succeeds.
    monkeypatch.setattr(scylla_store, "execute", lost_reply)
    settled = [record(10 + i) for i in range(3)]
    assert await store.append(settled) == 3
    monkeypatch.setattr(scylla_store, "execute", real_execute)
    later = [record(20 + i) for i in range(2)]
    await store.append(later)
    everything = await store.read(AuditQuery(), 0, 100)
    assert ids(everything[2:]) == ids(settled + later)
    assert await store.verify(0, 0) == (7, None)


# ---- occurrence order: closed ranges read in the order things happened ----------

def happened(t_us: int, *, decided_at: int | None = None, revision: int = 0, door: str = "d1",
             alarm: bool = False) -> AuditRecord:
    """A record built from a real envelope, as ingest builds it: a permission change of `revision`,
    a decision taken by a view at `decided_at`, or an alarm."""
    from latchkey.events.v1 import events_pb2 as ev

    from services.audit.records import to_record

    env = ev.Envelope(event_id=str(uuid.uuid4()), actor="spiffe://latchkey/role/admin")
    env.occurred_at.FromMicroseconds(t_us)
    if alarm:
        env.type = "access.security_alarm"
        env.security_alarm.door_id, env.security_alarm.kind = door, "REPEATED_DENIALS"
    elif decided_at is not None:
        env.type = "access.unlock_decided"
        env.unlock_decided.door_id, env.unlock_decided.user_id = door, "u1"
        env.unlock_decided.view_revision = decided_at
    else:
        env.type, env.revision = "permissions.door_changed", revision
        env.door_changed.door_id = door
    return to_record(env, env.SerializeToString())


async def occurred(store, query: AuditQuery, after=None) -> list[AuditRecord]:
    return [r async for r in store.read_occurred(query, after)]


async def test_a_closed_range_reads_in_the_order_things_happened(store):
    from services.audit.domain import occurrence_key

    t = NOW_US - 3_600_000_000
    # Stored in the order the two streams delivered them, which is not the order of occurrence.
    lockdown = happened(t + 10_000_000, revision=11)
    grant = happened(t + 20_000_000, revision=12)
    # A decision in the same microsecond as the lockdown, by a view that had not applied it yet,
    # and one by a view that had; two decisions tied in time and revision keep their storage order.
    before = happened(t + 10_000_000, decided_at=10)
    after_ = happened(t + 10_000_000, decided_at=11)
    tied = [happened(t + 12_000_000, decided_at=11) for _ in range(2)]
    spooled = happened(t + 5_000_000, decided_at=9)
    alarm = happened(t + 15_000_000, alarm=True)
    outside = [happened(t - 1, revision=10), happened(t + 30_000_000, revision=13)]
    await store.append([lockdown, grant, outside[0]])
    await store.append([before, after_, *tied, alarm, outside[1]])
    await store.append([spooled])
    query = AuditQuery(start_us=t, end_us=t + 30_000_000)
    expected = [spooled, before, lockdown, after_, *tied, alarm, grant]
    got = await occurred(store, query)
    assert ids(got) == ids(expected)
    assert [occurrence_key(r) for r in got] == sorted(occurrence_key(r) for r in got)
    # Resuming after any event's key gives exactly the rest, and filters hold.
    assert ids(await occurred(store, query, occurrence_key(got[2]))) == ids(expected[3:])
    assert ids(await occurred(store, replace(query, types=("permissions.door_changed",)))) == ids([lockdown, grant])
    assert ids(await occurred(store, replace(query, user_id="u1"))) == ids([spooled, before, after_, *tied])
    assert ids(await occurred(store, replace(query, door_id="d1"))) == ids(expected)
    assert ids(await occurred(store, replace(query, door_id="d2"))) == []
    # The storage order (and its chain) is untouched.
    assert ids(await store.read(AuditQuery(), 0, 100)) == ids(
        [lockdown, grant, outside[0], before, after_, *tied, alarm, outside[1], spooled])
    assert await store.verify(0, 0) == (10, None)


async def test_occurrence_order_merges_events_stored_on_different_days(stores):
    now = [NOW_US - DAY_US]
    store = await stores.open(clock=lambda: now[0])
    t = NOW_US - 2 * DAY_US
    # Yesterday's events, then today a door's spooled decisions from between them.
    first = [happened(t + i * 2_000_000, revision=20 + i) for i in range(6)]
    await store.append(first)
    now[0] = NOW_US
    late = [happened(t + i * 2_000_000 + 1_000_000, decided_at=20 + i) for i in range(6)]
    await store.append(late)
    expected = [r for pair in zip(first, late, strict=True) for r in pair]
    assert ids(await occurred(store, AuditQuery(end_us=NOW_US))) == ids(expected)
    assert ids(await occurred(store, AuditQuery(door_id="d1", end_us=NOW_US))) == ids(expected)
    assert ids(await occurred(store, AuditQuery(door_id="d2", end_us=NOW_US))) == []


async def test_occurrence_order_holds_a_bounded_window_of_small_partitions(cql_stores, monkeypatch):
    from services.audit.adapters import scylla_store

    # Parts of 8 rows, slices of 3 s and at most 4 rows held per read: every part is read
    # several times, and parts with late rows come back when the sweep reaches them.
    monkeypatch.setattr(scylla_store, "PART_BITS", 3)
    monkeypatch.setattr(scylla_store, "PART_SLICE_US", 3_000_000)
    monkeypatch.setattr(scylla_store, "KEY_DAY_SLICE_US", 3_000_000)
    monkeypatch.setattr(scylla_store, "OCCURRENCE_KEEP", 4)
    store = await cql_stores.open()
    t = NOW_US - 3_600_000_000
    written = [happened(t + ((i * 7) % 40) * 1_000_000, revision=100 + i) for i in range(40)]
    for start in range(0, 40, 5):
        await store.append(written[start:start + 5])
    expected = sorted(written, key=lambda r: r.source_time_us)
    assert ids(await occurred(store, AuditQuery(end_us=NOW_US))) == ids(expected)
    assert ids(await occurred(store, AuditQuery(door_id="d1", end_us=NOW_US))) == ids(expected)
    window = AuditQuery(start_us=t + 10_000_000, end_us=t + 30_000_000)
    assert ids(await occurred(store, window)) == ids(expected[10:30])


async def test_an_embedded_store_from_before_occurrence_order_gets_its_ranks_and_keeps_its_chain(tmp_path):
    from services.audit.adapters.sqlite_store import SqliteAuditStore

    # A store written before the causal rank was kept: the column is dropped again, as it was then.
    path = tmp_path / "old.sqlite"
    t = NOW_US - 3_600_000_000
    change, decision = happened(t, revision=5), happened(t, decided_at=4)
    old = SqliteAuditStore(path)
    await old.open()
    await old.append([change, decision])
    await old.close()
    with sqlite3.connect(path) as db:
        for index in ("ix_events_occurred", "ix_events_door_occurred"):
            db.execute(f"DROP INDEX {index}")
        db.execute("ALTER TABLE events DROP COLUMN causal_rank")
    # Opened by this version: each rank comes from its stored envelope; the chain is as it was.
    store = SqliteAuditStore(path)
    await store.open()
    try:
        assert ids(await occurred(store, AuditQuery(end_us=NOW_US))) == ids([decision, change])
        assert await store.verify(0, 0) == (2, None)
    finally:
        await store.close()
