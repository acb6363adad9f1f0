"""The audit store on ScyllaDB: day partitions, query tables by door and by user, async paging.

One ingest process writes (the chain has one order). Each event is one
LOGGED BATCH over the three tables and the event-id table, so a crash leaves
an event either everywhere or nowhere; on start the chain's tail is read back
from the newest day partition, never from a separately written counter.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from latchkit import cql
from latchkit.scylla import ScyllaSettings, connect, execute, pages
from services.audit.domain import GENESIS, AuditRecord, ChainBreak, record_hash, verify
from services.audit.ports import AuditQuery

CQL_DIR = Path(__file__).resolve().parent.parent / "cql"
DAY_US = 86_400_000_000
FIELDS = ("seq", "event_id", "type", "actor", "action", "user_id", "door_id", "credential_id", "outcome", "reason",
          "revision", "source_time_us", "stored_time_us", "envelope", "prev_hash", "hash")
COLS = ", ".join(FIELDS)


async def apply_schema(settings: ScyllaSettings, replication_factor: int = 3, retention_days: int = 2562) -> list:
    return await asyncio.to_thread(cql.apply_files, CQL_DIR, settings, rf=replication_factor,
                                   ttl=retention_days * 86_400)


def day_of(us: int) -> int:
    return us // DAY_US


def _record(row) -> AuditRecord:
    values = dict(zip(FIELDS, row, strict=True))
    return AuditRecord(**{k: (v if v is not None else (b"" if k in ("envelope", "prev_hash", "hash") else ""))
                          for k, v in values.items()})


class ScyllaAuditStore:
    def __init__(self, settings: ScyllaSettings, retention_days: int) -> None:
        self.settings = settings
        self.retention_days = retention_days
        self.cluster = self.session = None
        self._tail: tuple[int, bytes] = (0, GENESIS)
        self._lock = asyncio.Lock()
        self.s: dict = {}

    async def open(self) -> None:
        from cassandra.query import BatchType

        self._batch_type = BatchType.LOGGED
        self.cluster, self.session = await asyncio.to_thread(connect, self.settings)
        ks, p = self.settings.keyspace, self.session.prepare
        marks = ", ".join("?" * len(FIELDS))
        self.s = {
            "by_day": p(f"INSERT INTO {ks}.audit_by_day (day, {COLS}) VALUES (?, {marks})"),
            "by_door": p(f"INSERT INTO {ks}.audit_by_door (day, {COLS}) VALUES (?, {marks})"),
            "by_user": p(f"INSERT INTO {ks}.audit_by_user (day, {COLS}) VALUES (?, {marks})"),
            "id": p(f"INSERT INTO {ks}.audit_event_ids (event_id, seq) VALUES (?, ?)"),
            "has_id": p(f"SELECT seq FROM {ks}.audit_event_ids WHERE event_id = ?"),
            "day": p(f"SELECT {COLS} FROM {ks}.audit_by_day WHERE day = ? AND seq > ? LIMIT ?"),
            "door": p(f"SELECT {COLS} FROM {ks}.audit_by_door WHERE door_id = ? AND day = ? AND seq > ? LIMIT ?"),
            "user": p(f"SELECT {COLS} FROM {ks}.audit_by_user WHERE user_id = ? AND day = ? AND seq > ? LIMIT ?"),
            "last_of_day": p(f"SELECT {COLS} FROM {ks}.audit_by_day WHERE day = ? ORDER BY seq DESC LIMIT 1"),
            "last_before": p(f"SELECT {COLS} FROM {ks}.audit_by_day WHERE day = ? AND seq < ? "
                             "ORDER BY seq DESC LIMIT 1"),
            "put_pos": p(f"UPDATE {ks}.audit_positions SET stream_seq = ? WHERE stream = ?"),
            "get_pos": p(f"SELECT stream_seq FROM {ks}.audit_positions WHERE stream = ?"),
            "park": p(f"INSERT INTO {ks}.audit_parked (stream, stream_seq, raw, error) VALUES (?, ?, ?, ?)"),
            "parked": p(f"SELECT stream, stream_seq, raw, error FROM {ks}.audit_parked"),
        }
        self._tail = await self._find_tail(day_of(time.time_ns() // 1000))

    async def _find_tail(self, today: int) -> tuple[int, bytes]:
        for day in range(today, today - self.retention_days - 1, -1):
            rows = await execute(self.session, self.s["last_of_day"], (day,))
            if rows:
                r = _record(rows[0])
                return r.seq, r.hash
        return 0, GENESIS

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None

    async def append(self, records: list[AuditRecord], stream: str = "", stream_seq: int = 0) -> int:
        from cassandra.query import BatchStatement

        async with self._lock:
            known = await asyncio.gather(*(execute(self.session, self.s["has_id"], (r.event_id,)) for r in records))
            seq, prev = self._tail
            added, seen = 0, set()
            for r, hit in zip(records, known, strict=True):
                if hit or r.event_id in seen:
                    continue
                seen.add(r.event_id)
                day = day_of(r.stored_time_us)
                seq = max(seq + 1, day << 32)
                r = replace(r, seq=seq, prev_hash=prev)
                r = replace(r, hash=record_hash(prev, r))
                values = tuple(getattr(r, f) for f in FIELDS)
                batch = BatchStatement(batch_type=self._batch_type)
                batch.add(self.s["by_day"], (day, *values))
                if r.door_id:
                    batch.add(self.s["by_door"], (day, *values))
                if r.user_id:
                    batch.add(self.s["by_user"], (day, *values))
                batch.add(self.s["id"], (r.event_id, seq))
                await execute(self.session, batch)  # in order: the chain is sequential
                prev, added = r.hash, added + 1
                self._tail = (seq, prev)
            if stream:
                await execute(self.session, self.s["put_pos"], (stream_seq, stream))
            return added

    async def position(self, stream: str) -> int:
        rows = await execute(self.session, self.s["get_pos"], (stream,))
        return rows[0][0] if rows else 0

    async def read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        today = day_of(time.time_ns() // 1000)
        day = max(after_seq >> 32, day_of(query.start_us) if query.start_us else 0,
                  today - self.retention_days)
        last_day = min(today, day_of(query.end_us) if query.end_us else today)
        found: list[AuditRecord] = []
        while day <= last_day and len(found) < limit:
            if query.door_id:
                stmt, params = self.s["door"], (query.door_id, day, after_seq, 1000)
            elif query.user_id:
                stmt, params = self.s["user"], (query.user_id, day, after_seq, 1000)
            else:
                stmt, params = self.s["day"], (day, after_seq, 1000)
            async for page in pages(self.session, stmt, params):
                for row in page:
                    r = _record(row)
                    after_seq = r.seq
                    if self._matches(r, query):
                        found.append(r)
                        if len(found) >= limit:
                            return found
            day += 1
        return found

    @staticmethod
    def _matches(r: AuditRecord, q: AuditQuery) -> bool:
        return ((not q.user_id or r.user_id == q.user_id) and (not q.types or r.type in q.types)
                and (not q.start_us or r.source_time_us >= q.start_us)
                and (not q.end_us or r.source_time_us < q.end_us))

    async def last_seq(self) -> int:
        return self._tail[0]

    async def verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        today = day_of(time.time_ns() // 1000)
        first_day = max(day_of(start_us), today - self.retention_days) if start_us else today - self.retention_days
        records = []
        for day in range(first_day, min(today, day_of(end_us) if end_us else today) + 1):
            async for page in pages(self.session, self.s["day"], (day, 0, 10**9)):
                records += [r for r in map(_record, page)
                            if r.stored_time_us >= start_us and (not end_us or r.stored_time_us < end_us)]
        if not records:
            return 0, None
        anchor = (0, GENESIS)
        first = records[0]
        for day in range(first.seq >> 32, first_day - 2, -1):
            rows = await execute(self.session, self.s["last_before"], (day, first.seq))
            if rows:
                r = _record(rows[0])
                anchor = (r.seq, r.hash)
                break
        return verify(records, anchor[1], anchor[0])

    async def park(self, stream: str, stream_seq: int, raw: bytes, error: str) -> None:
        await execute(self.session, self.s["park"], (stream, stream_seq, raw, error))

    async def parked(self) -> list[tuple[str, int, bytes, str]]:
        result = []
        async for page in pages(self.session, self.s["parked"]):
            result += [(r[0], r[1], r[2], r[3]) for r in page]
        return result
