"""The audit store on ScyllaDB: bounded partitions, an index of them, a fenced single writer.

docs/cql-audit-store.md is the design; in short:

- `seq` is the storage order: the day in the high 32 bits, a counter below.
  It never goes backwards (a clock stepping back keeps the current day), and
  every partition is derived from it, never from a wall clock.
- Rows live in `audit_events` partitions of `part` = seq >> PART_BITS and are
  clustered by (seq, epoch); `audit_parts` lists the non-empty parts.
- One writer at a time holds the fence (`audit_writer`, changed only by
  lightweight transactions). An append computes the chain in memory, writes
  all rows concurrently, and only then advances the committed tail with an
  LWT conditional on its epoch. Rows past the committed tail (a crash, a
  failed write, a writer fenced out mid-append) are never read and never
  chained over: the next append rewrites them under the same epoch, or a new
  writer starts after the committed tail under a new epoch, in other rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from bisect import bisect_right
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latchkit import scylla as cql
from latchkit.errors import Unavailable
from latchkit.scylla import ScyllaSettings, connect, execute, pages
from services.audit.adapters.occurrence_merge import Source, merge
from services.audit.domain import (
    GENESIS,
    AuditRecord,
    ChainBreak,
    occurrence_key,
    record_hash,
    verify,
)
from services.audit.ports import AuditQuery, AuditWriterFenced
from services.audit.records import stored_rank

CQL_DIR = Path(__file__).resolve().parent.parent / "cql"
DAY_US = 86_400_000_000
DAY_SHIFT = 32
PART_BITS = 14
"""At most 2**14 rows per partition (~10 MB at ~600 bytes a row)."""
SPAN_SHIFT = 5
"""`audit_parts` groups the parts of 2**5 = 32 days in one partition."""
TARGET_WINDOWS = 80
"""TWCS windows over the retention period (fewer than ~100 keeps compaction cheap)."""
PART_SLICE_US = 60_000_000
"""Occurrence order reads rows of a part up to a minute (in source time) past the sweep point:
about one part's worth at the design rate, never hours of a part that holds a late event."""
KEY_DAY_SLICE_US = 3_600_000_000
"""A door's or user's day partition is read an hour at a time (a busy door: ~3,600 rows)."""
OCCURRENCE_KEEP = 16_384
"""At most this many rows of one partition read are held (one full part)."""
WRITES_IN_FLIGHT = 256
STATEMENTS_PER_BATCH = 32
IDS_PER_QUERY = 64
FIELDS = ("seq", "event_id", "type", "actor", "action", "user_id", "door_id", "credential_id", "outcome", "reason",
          "revision", "source_time_us", "stored_time_us", "envelope", "prev_hash", "hash")
COLS = ", ".join(FIELDS)
TABLETS_OFF = " AND tablets = {'enabled': false}"


def window_days(retention_days: int) -> int:
    return max(1, -(-retention_days // TARGET_WINDOWS))


def _scylla_tablets(settings: ScyllaSettings) -> tuple[bool, bool]:
    """(is the cluster ScyllaDB, does the keyspace already exist with tablets)."""
    cluster, session = connect(settings)
    try:
        if "scylla_local" not in cluster.metadata.keyspaces["system"].tables:
            return False, False
        row = session.execute("SELECT * FROM system_schema.scylla_keyspaces WHERE keyspace_name = %s",
                              (settings.keyspace,)).one()
        return True, row is not None and getattr(row, "initial_tablets", None) is not None
    finally:
        cluster.shutdown()


async def apply_schema(settings: ScyllaSettings, replication_factor: int = 3, retention_days: int = 2562) -> list:
    """Apply cql/*.cql and return apply_files' change lines (then a note on tablets).

    The writer fence needs lightweight transactions, which ScyllaDB does not offer
    on tablet keyspaces: there the keyspace is created with tablets disabled, and
    an existing tablet keyspace is refused (it must be re-created).
    """
    scylla, tablets = await asyncio.to_thread(_scylla_tablets, settings)
    if tablets:
        raise RuntimeError(f"keyspace {settings.keyspace} uses tablets: the audit writer fence needs LWT, which "
                           "ScyllaDB has only on vnode keyspaces; re-create it with" + TABLETS_OFF.removeprefix(" AND"))
    changes = await asyncio.to_thread(cql.apply_files, CQL_DIR, settings, rf=replication_factor,
                                      ttl=retention_days * 86_400, window_days=window_days(retention_days),
                                      keyspace_options=TABLETS_OFF if scylla else "")
    note = ("ScyllaDB: a vnode keyspace (tablets disabled), as the writer fence's LWT requires" if scylla else
            "not ScyllaDB: no tablets here; on ScyllaDB the keyspace is created with tablets disabled (LWT)")
    return [*changes, f"keyspace {settings.keyspace}: {note}"]


def day_of(us: int) -> int:
    return us // DAY_US


def part_of(seq: int) -> int:
    return seq >> PART_BITS


def day_of_part(part: int) -> int:
    return part >> (DAY_SHIFT - PART_BITS)


def span_of(day: int) -> int:
    return day >> SPAN_SHIFT


def _driver_errors() -> tuple[type[BaseException], ...]:
    from cassandra import OperationTimedOut, ReadTimeout, WriteTimeout
    from cassandra import Unavailable as ReplicasUnavailable
    from cassandra.cluster import NoHostAvailable

    return ReplicasUnavailable, ReadTimeout, WriteTimeout, OperationTimedOut, NoHostAvailable


@contextlib.contextmanager
def unavailable_on_driver_errors(what: str = "the audit store"):
    """Cluster overload or outage -> `Unavailable` (gRPC UNAVAILABLE: retry), not an UNKNOWN status."""
    try:
        yield
    except _driver_errors() as exc:
        raise Unavailable(f"{what} is unavailable or overloaded; retry shortly") from exc


def _record(row: Sequence[Any]) -> AuditRecord:
    fields: dict[str, Any] = {k: (v if v is not None else (b"" if k in ("envelope", "prev_hash", "hash") else ""))
                              for k, v in zip(FIELDS, row, strict=False)}
    return AuditRecord(**fields)


@dataclass(frozen=True)
class ChainView:
    """What is committed: rows of epoch E with first_seq(E) <= seq < first_seq(next), and seq <= tail."""

    tail: int
    epochs: tuple[int, ...]
    firsts: tuple[int, ...]

    def valid(self, seq: int, epoch: int) -> bool:
        if seq > self.tail:
            return False
        i = bisect_right(self.epochs, epoch) - 1
        if i < 0 or self.epochs[i] != epoch or seq < self.firsts[i]:
            return False
        return i + 1 == len(self.epochs) or seq < self.firsts[i + 1]


class ScyllaAuditStore:
    def __init__(self, settings: ScyllaSettings, retention_days: int,
                 clock: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.retention_days = retention_days
        self.clock = clock or (lambda: time.time_ns() // 1000)
        """Microseconds since the epoch; injectable so tests can step it back."""
        # The driver's Cluster and Session once open (the driver has no type hints).
        self.cluster: Any = None
        self.session: Any = None
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{id(self):x}"
        self.epoch = 0
        self._tail: tuple[int, bytes] = (0, GENESIS)
        self._positions: dict[str, int] = {}
        self._part_range: tuple[int, int, int] | None = None
        self._fenced = self._unsettled = False
        self._history = self._epochs_seen = ChainView(0, (), ())
        self._lock = asyncio.Lock()
        self.s: dict = {}

    async def open(self) -> None:
        from cassandra import ConsistencyLevel

        self.cluster, self.session = await asyncio.to_thread(connect, self.settings)
        ks, p = self.settings.keyspace, self.session.prepare
        marks = ", ".join("?" * (len(FIELDS) + 2))
        self.s = {
            "event": p(f"INSERT INTO {ks}.audit_events (part, epoch, {COLS}) VALUES ({marks})"),
            "by_door": p(f"INSERT INTO {ks}.audit_events_by_door (day, epoch, {COLS}) VALUES ({marks})"),
            "by_user": p(f"INSERT INTO {ks}.audit_events_by_user (day, epoch, {COLS}) VALUES ({marks})"),
            "put_id": p(f"INSERT INTO {ks}.audit_event_seqs (event_id, epoch, seq) VALUES (?, ?, ?)"),
            "put_part": p(f"UPDATE {ks}.audit_parts SET min_source_us = ?, max_source_us = ? "
                          "WHERE span = ? AND part = ? AND epoch = ?"),
            "get_ids": p(f"SELECT event_id, epoch, seq FROM {ks}.audit_event_seqs WHERE event_id IN ?"),
            "rows": p(f"SELECT {COLS}, epoch FROM {ks}.audit_events WHERE part = ? AND seq > ? AND seq <= ?"),
            "rows_desc": p(f"SELECT {COLS}, epoch FROM {ks}.audit_events WHERE part = ? AND seq < ? "
                           "ORDER BY seq DESC, epoch DESC"),
            "door": p(f"SELECT {COLS}, epoch FROM {ks}.audit_events_by_door "
                      "WHERE door_id = ? AND day = ? AND seq > ? AND seq <= ?"),
            "user": p(f"SELECT {COLS}, epoch FROM {ks}.audit_events_by_user "
                      "WHERE user_id = ? AND day = ? AND seq > ? AND seq <= ?"),
            "parts": p(f"SELECT part, epoch, min_source_us, max_source_us FROM {ks}.audit_parts "
                       "WHERE span = ? AND part >= ? AND part <= ?"),
            "parts_desc": p(f"SELECT part FROM {ks}.audit_parts WHERE span = ? AND part <= ? ORDER BY part DESC"),
            "writer": p(f"SELECT epoch, tail_seq, tail_hash, positions FROM {ks}.audit_writer WHERE id = 0"),
            "writer_serial": p(f"SELECT epoch, tail_seq, tail_hash, positions FROM {ks}.audit_writer WHERE id = 0"),
            "first_writer": p(f"INSERT INTO {ks}.audit_writer (id, epoch, owner, tail_seq, tail_hash, positions) "
                              "VALUES (0, 1, ?, 0, ?, {}) IF NOT EXISTS"),
            "take_over": p(f"UPDATE {ks}.audit_writer SET epoch = ?, owner = ? WHERE id = 0 "
                           "IF epoch = ? AND tail_seq = ?"),
            "commit": p(f"UPDATE {ks}.audit_writer SET tail_seq = ?, tail_hash = ?, positions = positions + ? "
                        "WHERE id = 0 IF epoch = ?"),
            "put_epoch": p(f"INSERT INTO {ks}.audit_epochs (id, epoch, first_seq, owner, started_us) "
                           "VALUES (0, ?, ?, ?, ?)"),
            "epochs": p(f"SELECT epoch, first_seq FROM {ks}.audit_epochs WHERE id = 0"),
            "park": p(f"INSERT INTO {ks}.audit_parked (stream, stream_seq, raw, error) VALUES (?, ?, ?, ?)"),
            "parked": p(f"SELECT stream, stream_seq, raw, error FROM {ks}.audit_parked"),
        }
        self.s["writer_serial"].consistency_level = ConsistencyLevel.SERIAL
        for name in ("first_writer", "take_over", "commit"):
            self.s[name].serial_consistency_level = ConsistencyLevel.SERIAL
        for name in ("event", "by_door", "by_user", "put_id", "put_part", "put_epoch", "park"):
            # Same key, same values (a row is only ever rewritten by its own epoch): retries are harmless.
            self.s[name].is_idempotent = True
        with unavailable_on_driver_errors():
            await self._take_fence()

    async def _take_fence(self) -> None:
        """Become the writer: a new epoch whose rows start after the committed tail (an LWT, retried on races)."""
        for _ in range(20):
            rows = await execute(self.session, self.s["writer_serial"])
            if not rows:
                applied = await execute(self.session, self.s["first_writer"], (self.owner, GENESIS))
                state: tuple[int, int, bytes, dict[str, int]] = (1, 0, GENESIS, {})
            else:
                epoch, tail_seq, tail_hash, positions = rows[0]
                applied = await execute(self.session, self.s["take_over"], (epoch + 1, self.owner, epoch, tail_seq))
                state = (epoch + 1, tail_seq, tail_hash or GENESIS, dict(positions or {}))
            if applied[0][0]:
                break
        else:
            raise AuditWriterFenced("could not take the audit writer fence: other writers keep taking it")
        self.epoch, tail_seq, tail_hash, self._positions = state
        self._tail = (tail_seq, tail_hash)
        # Before any row of this epoch is committed: readers then bound the previous
        # epoch's rows at this first_seq (its uncommitted rows past the tail are never valid).
        await execute(self.session, self.s["put_epoch"], (self.epoch, tail_seq + 1, self.owner, self.clock()))
        epochs = sorted((e, f) for e, f in await execute(self.session, self.s["epochs"]) if e <= self.epoch)
        self._history = ChainView(tail_seq, tuple(e for e, _ in epochs), tuple(f for _, f in epochs))

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None

    async def _view(self) -> ChainView:
        # The writer row first: the epochs row of a newer writer is written before its
        # first commit, so a tail that includes its rows always comes with its first_seq.
        writer = await execute(self.session, self.s["writer"])
        if not writer:
            return ChainView(0, (), ())
        epoch, tail = writer[0][0], writer[0][1]
        cached = self._epochs_seen
        if not cached.epochs or cached.epochs[-1] < epoch:
            # Epochs only ever get added (one per writer start): reload when a newer one appears.
            epochs = sorted((e, f) for e, f in await execute(self.session, self.s["epochs"]))
            cached = self._epochs_seen = ChainView(0, tuple(e for e, _ in epochs), tuple(f for _, f in epochs))
        return replace(cached, tail=tail)

    async def _gather(self, calls) -> list:
        """Run every call; raise the first error only after all have ended (nothing left in flight)."""
        limit = asyncio.Semaphore(WRITES_IN_FLIGHT)

        async def one(stmt, params):
            async with limit:
                return await execute(self.session, stmt, params)

        results = await asyncio.gather(*(one(s, p) for s, p in calls), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def append(self, records: list[AuditRecord], stream: str = "", stream_seq: int = 0) -> int:
        async with self._lock:
            if self._fenced:
                raise AuditWriterFenced(f"epoch {self.epoch} was fenced out by a newer audit writer")
            if self._unsettled:
                await self._settle()
            known_rows = await self._known_ids([r.event_id for r in records])
            seq, prev = self._tail
            floor = day_of(self.clock()) << DAY_SHIFT
            new: list[AuditRecord] = []
            seen: set[str] = set()
            for r, hits in zip(records, known_rows, strict=True):
                # An id is known only if a committed row holds it: one written by an
                # uncommitted (failed, fenced) append is written again.
                if r.event_id in seen or any(self._known(e, s) for e, s in hits):
                    continue
                seen.add(r.event_id)
                seq = max(seq + 1, floor)
                r = replace(r, seq=seq, prev_hash=prev)
                r = replace(r, hash=record_hash(prev, r))
                prev = r.hash
                new.append(r)
            if not new and not stream:
                return 0
            await self._gather(self._index_writes(new))
            await self._gather(self._batched(self._row_writes(new)))
            positions = {stream: max(stream_seq, self._positions.get(stream, 0))} if stream else {}
            await self._commit(seq, prev, positions)
            self._tail = (seq, prev)
            self._positions.update(positions)
            return len(new)

    async def _known_ids(self, event_ids: list[str]) -> list[list[tuple[int, int]]]:
        """For each id, its (epoch, seq) rows: one `IN` query per IDS_PER_QUERY ids, not one per id."""
        chunks = [event_ids[i:i + IDS_PER_QUERY] for i in range(0, len(event_ids), IDS_PER_QUERY)]
        found: dict[str, list[tuple[int, int]]] = {}
        for rows in await self._gather([(self.s["get_ids"], (list(dict.fromkeys(c)),)) for c in chunks]):
            for event_id, epoch, seq in rows:
                found.setdefault(event_id, []).append((epoch, seq))
        return [found.get(e, []) for e in event_ids]

    def _batched(self, calls: list) -> list:
        """The row writes as UNLOGGED batches of STATEMENTS_PER_BATCH.

        Not for atomicity (rows are written before the commit, and an uncommitted row is
        simply written again): on a small client the per-request cost of the driver, not
        the cluster, bounds the ingest rate, and one request per 32 rows cuts it by 32.
        Each batch stays under ScyllaDB's batch size warning (128 KiB); the local
        engine is configured with the same thresholds.
        """
        from cassandra.query import BatchStatement, BatchType

        batches = []
        for i in range(0, len(calls), STATEMENTS_PER_BATCH):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for statement, params in calls[i:i + STATEMENTS_PER_BATCH]:
                batch.add(statement, params)
            batch.is_idempotent = True  # the same rows at the same keys: a retry changes nothing
            batches.append((batch, None))
        return batches

    def _known(self, epoch: int, seq: int) -> bool:
        """Does a committed row hold this (epoch, seq) of `audit_event_seqs`?"""
        if epoch == self.epoch:
            return self._history.firsts[-1] <= seq <= self._tail[0]
        # An older epoch's range is closed; a newer epoch means this writer is about
        # to be fenced out at commit anyway.
        return epoch > self.epoch or self._history.valid(seq, epoch)

    def _index_writes(self, new: list[AuditRecord]) -> list:
        """One index row per touched part of this epoch, written before the rows (a superset is harmless)."""
        calls = []
        for i, r in enumerate(new):
            part = part_of(r.seq)
            if self._part_range is None or self._part_range[0] != part:
                self._part_range = (part, r.source_time_us, r.source_time_us)
            _, low, high = self._part_range
            low, high = min(low, r.source_time_us), max(high, r.source_time_us)
            self._part_range = (part, low, high)
            if i + 1 == len(new) or part_of(new[i + 1].seq) != part:
                calls.append((self.s["put_part"], (low, high, span_of(day_of_part(part)), part, self.epoch)))
        return calls

    def _row_writes(self, new: list[AuditRecord]) -> list:
        calls = []
        for r in new:
            values = tuple(getattr(r, f) for f in FIELDS)
            day = r.seq >> DAY_SHIFT
            calls.append((self.s["event"], (part_of(r.seq), self.epoch, *values)))
            if r.door_id:
                calls.append((self.s["by_door"], (day, self.epoch, *values)))
            if r.user_id:
                calls.append((self.s["by_user"], (day, self.epoch, *values)))
            calls.append((self.s["put_id"], (r.event_id, self.epoch, r.seq)))
        return calls

    async def _commit(self, seq: int, prev: bytes, positions: dict[str, int]) -> None:
        """Advance the committed tail, only while this epoch still holds the fence."""
        from cassandra import OperationTimedOut, WriteTimeout

        try:
            applied = await execute(self.session, self.s["commit"], (seq, prev, positions, self.epoch))
        except (WriteTimeout, OperationTimedOut):
            # The outcome of a timed-out LWT is unknown: settle it before anything else is
            # appended, or the next append would rewrite rows that may be committed.
            self._unsettled = True
            await self._settle()
            if self._tail[0] == seq:
                return
            raise
        if not applied[0][0]:
            self._fenced = True
            raise AuditWriterFenced(f"epoch {self.epoch} was fenced out by a newer audit writer; "
                                    "its uncommitted rows are ignored")

    async def _settle(self) -> None:
        """Adopt the committed tail as a SERIAL read shows it (after a commit whose outcome is unknown)."""
        rows = await execute(self.session, self.s["writer_serial"])
        if not rows or rows[0][0] != self.epoch:
            self._fenced = True
            raise AuditWriterFenced(f"epoch {self.epoch} was fenced out by a newer audit writer")
        _, tail_seq, tail_hash, positions = rows[0]
        self._tail, self._positions = (tail_seq, tail_hash), dict(positions or {})
        self._unsettled = False

    async def position(self, stream: str) -> int:
        with unavailable_on_driver_errors():
            rows = await execute(self.session, self.s["writer"])
        return (rows[0][3] or {}).get(stream, 0) if rows else 0

    async def last_seq(self) -> int:
        return self._tail[0]

    async def _parts(self, view: ChainView, after_seq: int):
        """Yield (part, [(epoch, min_source, max_source)]) of non-empty parts from the index, in order."""
        horizon = span_of(day_of(self.clock()) - self.retention_days)
        lo, hi = part_of(after_seq), part_of(view.tail)
        current: list = []
        for span in range(max(span_of(day_of_part(lo)), horizon), span_of(day_of_part(hi)) + 1):
            async for page in pages(self.session, self.s["parts"], (span, lo, hi)):
                for part, epoch, low, high in page:
                    if current and current[0] != part:
                        yield current[0], current[1]
                        current = []
                    if not current:
                        current = [part, []]
                    current[1].append((epoch, low, high))
        if current:
            yield current[0], current[1]

    async def read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        with unavailable_on_driver_errors():
            return await self._read(query, after_seq, limit)

    async def _read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        view = await self._view()
        found: list[AuditRecord] = []
        if view.tail <= after_seq or limit <= 0:
            return found
        days_done: set[int] = set()
        async for part, ranges in self._parts(view, after_seq):
            # The index's source-time range lets a time filter skip the part unread.
            if query.start_us and max(h for _, _, h in ranges) < query.start_us:
                continue
            if query.end_us and min(lo for _, lo, _ in ranges) >= query.end_us:
                continue
            if query.door_id or query.user_id:
                day = day_of_part(part)
                if day in days_done:
                    continue
                days_done.add(day)
                key = query.door_id or query.user_id
                params: tuple[object, ...] = (key, day, after_seq, view.tail)
                stmt = self.s["door" if query.door_id else "user"]
            else:
                stmt, params = self.s["rows"], (part, after_seq, view.tail)
            # Page through the whole partition: a filter may reject any number of rows. Pages
            # are sized to what is still wanted (at least 100 rows, at most the driver's 5,000).
            wanted = min(max(limit - len(found), 100), 5000)
            async for page in pages(self.session, stmt, params, fetch_size=wanted):
                for row in page:
                    r = _record(row)
                    if view.valid(r.seq, row[-1]) and self._matches(r, query):
                        found.append(r)
                        if len(found) >= limit:
                            return found
        return found

    async def read_occurred(self, query: AuditQuery,
                            after: tuple[int, int, int] | None) -> AsyncGenerator[AuditRecord, None]:
        """Occurrence order by a sweep merge (occurrence_merge.py) of the parts, or of the door/user days.

        Each partition's lower source-time bound comes from `audit_parts`; the
        causal rank is derived from each row's envelope (rows keep no column of it).
        """
        with unavailable_on_driver_errors():
            view = await self._view()
            sources = await self._occurrence_sources(view, query, after)

            async def read(name, resume, window) -> None:
                stmt, params = name
                async for page in pages(self.session, stmt, params):
                    for row in page:
                        r = _record(row)
                        if not view.valid(r.seq, row[-1]) or not self._matches(r, query):
                            continue
                        r = replace(r, causal_rank=stored_rank(r.envelope))
                        if resume is None or occurrence_key(r) > resume:
                            window.offer(r)

            async for r in merge(sources, read, after, OCCURRENCE_KEEP):
                yield r

    async def _occurrence_sources(self, view: ChainView, query: AuditQuery,
                                  after: tuple[int, int, int] | None) -> list[Source]:
        """The partitions that may hold a row of the range, each with its earliest possible source time."""
        start = max(query.start_us, after[0] if after else 0)
        lows: dict[int, int] = {}
        async for part, ranges in self._parts(view, 0):
            low, high = min(lo for _, lo, _ in ranges), max(h for _, _, h in ranges)
            if high < start or (query.end_us and low >= query.end_us):
                continue
            # A door or user filter reads that key's day partition: its bound is the lowest of its parts.
            name = day_of_part(part) if query.door_id or query.user_id else part
            lows[name] = min(lows.get(name, low), low)
        if query.door_id or query.user_id:
            stmt, key = self.s["door" if query.door_id else "user"], query.door_id or query.user_id
            return [Source(max(low, start), KEY_DAY_SLICE_US, (stmt, (key, day, 0, view.tail)))
                    for day, low in lows.items()]
        return [Source(max(low, start), PART_SLICE_US, (self.s["rows"], (part, 0, view.tail)))
                for part, low in lows.items()]

    @staticmethod
    def _matches(r: AuditRecord, q: AuditQuery) -> bool:
        return ((not q.user_id or r.user_id == q.user_id) and (not q.door_id or r.door_id == q.door_id)
                and (not q.types or r.type in q.types)
                and (not q.start_us or r.source_time_us >= q.start_us)
                and (not q.end_us or r.source_time_us < q.end_us))

    async def verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        with unavailable_on_driver_errors():
            return await self._verify(start_us, end_us)

    async def _verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        """Stream the valid rows page by page (constant memory), anchored on the previous surviving row."""
        view = await self._view()
        after = (day_of(start_us) << DAY_SHIFT) - 1 if start_us else 0
        last_day = day_of(end_us) + 1 if end_us else None
        checked, link = 0, None
        async for part, _ in self._parts(view, after):
            if last_day is not None and day_of_part(part) > last_day:
                break
            async for page in pages(self.session, self.s["rows"], (part, after, view.tail)):
                batch: list[AuditRecord] = []
                for row in page:
                    r = _record(row)
                    if not view.valid(r.seq, row[-1]) or (end_us and r.stored_time_us >= end_us):
                        continue
                    if link is None and not batch and r.stored_time_us < start_us:
                        continue  # before the range (the first row of the range decides)
                    batch.append(r)
                if not batch:
                    continue
                if link is None:
                    link = await self._previous_link(view, batch[0])
                n, broken = verify(batch, link[1], link[0])
                checked += n
                if broken is not None:
                    return checked, broken
                link = (batch[-1].seq, batch[-1].hash)
        return checked, None

    async def _previous_link(self, view: ChainView, first: AuditRecord) -> tuple[int, bytes]:
        """The valid row before `first`, searched back to the retention horizon through the index.

        None survives (the older rows expired under the TTL, or `first` starts the
        chain): `first` itself is the anchor, trusted as the oldest surviving row.
        """
        horizon = day_of(self.clock()) - self.retention_days - 1
        part = part_of(first.seq)
        for span in range(span_of(day_of_part(part)), span_of(horizon) - 1, -1):
            async for index_page in pages(self.session, self.s["parts_desc"], (span, part)):
                for p in dict.fromkeys(p for (p,) in index_page):
                    async for page in pages(self.session, self.s["rows_desc"], (p, first.seq)):
                        for row in page:
                            if view.valid(row[0], row[-1]):
                                r = _record(row)
                                return r.seq, r.hash
        return first.seq - 1, first.prev_hash

    async def park(self, stream: str, stream_seq: int, raw: bytes, error: str) -> None:
        await execute(self.session, self.s["park"], (stream, stream_seq, raw, error))

    async def parked(self) -> list[tuple[str, int, bytes, str]]:
        result = []
        with unavailable_on_driver_errors():
            async for page in pages(self.session, self.s["parked"]):
                result += [(r[0], r[1], r[2], r[3]) for r in page]
        return result
