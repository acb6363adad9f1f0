"""The embedded audit store: SQLite in WAL mode, one hash chain in storage order.

One writer (the ingest) appends in a transaction with synchronous=FULL, so a
returned `append` is on disk. Readers (AuditLog streams) use their own
connections in threads: a long read never blocks the event loop or the
writer. Indexes serve the filters: by door, by user, by type, by time.

Occurrence-order reads (closed ranges) walk an index on (source_time_us,
causal_rank, seq), or one per door led by the same key, page by page from the
last key sent: no sort, constant memory however big the range.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path

from services.audit.domain import (
    GENESIS,
    AuditRecord,
    ChainBreak,
    occurrence_key,
    record_hash,
    verify,
)
from services.audit.ports import AuditQuery
from services.audit.records import stored_rank

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, user_id TEXT NOT NULL, door_id TEXT NOT NULL, credential_id TEXT NOT NULL,
    outcome TEXT NOT NULL, reason TEXT NOT NULL, revision INTEGER NOT NULL, source_time_us INTEGER NOT NULL,
    stored_time_us INTEGER NOT NULL, envelope BLOB NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
    causal_rank INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS ix_events_door ON events (door_id, seq) WHERE door_id <> '';
CREATE INDEX IF NOT EXISTS ix_events_user ON events (user_id, seq) WHERE user_id <> '';
CREATE INDEX IF NOT EXISTS ix_events_type ON events (type, seq);
CREATE INDEX IF NOT EXISTS ix_events_stored ON events (stored_time_us);
CREATE TABLE IF NOT EXISTS positions (stream TEXT PRIMARY KEY, stream_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS parked (
    stream TEXT NOT NULL, stream_seq INTEGER NOT NULL, raw BLOB NOT NULL, error TEXT NOT NULL,
    PRIMARY KEY (stream, stream_seq));
"""
OCCURRENCE_INDEXES = """
CREATE INDEX IF NOT EXISTS ix_events_occurred ON events (source_time_us, causal_rank, seq);
CREATE INDEX IF NOT EXISTS ix_events_door_occurred ON events (door_id, source_time_us, causal_rank, seq)
    WHERE door_id <> '';
"""
COLUMNS = ("seq, event_id, type, actor, action, user_id, door_id, credential_id, outcome, reason, revision, "
           "source_time_us, stored_time_us, envelope, prev_hash, hash, causal_rank")
PAGE = 256
"""Rows per occurrence-order query: one page in memory at a time."""
EventRow = tuple[int, str, str, str, str, str, str, str, str, str, int, int, int, bytes, bytes, bytes, int]
"""One row of COLUMNS."""


def _where(query: AuditQuery) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    for column, value in (("door_id", query.door_id), ("user_id", query.user_id)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if query.types:
        where.append(f"type IN ({','.join('?' * len(query.types))})")
        params += list(query.types)
    if query.start_us:
        where.append("source_time_us >= ?")
        params.append(query.start_us)
    if query.end_us:
        where.append("source_time_us < ?")
        params.append(query.end_us)
    return where, params


def _record(row: EventRow) -> AuditRecord:
    return AuditRecord(*row[:13], bytes(row[13]), bytes(row[14]), bytes(row[15]), row[16])


class SqliteAuditStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tail: tuple[int, bytes] = (0, GENESIS)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._add_causal_rank(self._writer)
        self._writer.executescript(OCCURRENCE_INDEXES)
        row = self._writer.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self._tail = (row[0], bytes(row[1])) if row else (0, GENESIS)

    @staticmethod
    def _add_causal_rank(db: sqlite3.Connection) -> None:
        """A store made before occurrence order gets the column, filled from each stored envelope.

        Only the column is new: the rank derives from the envelope, which the chain
        already covers, so no hash changes.
        """
        if any(col[1] == "causal_rank" for col in db.execute("PRAGMA table_info(events)")):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE events ADD COLUMN causal_rank INTEGER NOT NULL DEFAULT 0")
            rows = db.execute("SELECT seq, envelope FROM events WHERE revision > 0 OR type = ?",
                              ("access.unlock_decided",))
            while chunk := rows.fetchmany(1000):
                db.executemany("UPDATE events SET causal_rank = ? WHERE seq = ?",
                               [(stored_rank(bytes(envelope)), seq) for seq, envelope in chunk])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def append(self, records: list[AuditRecord], stream: str = "", stream_seq: int = 0) -> int:
        return await asyncio.to_thread(self._append, records, stream, stream_seq)

    async def position(self, stream: str) -> int:
        row = await asyncio.to_thread(lambda: self._reader().execute(
            "SELECT stream_seq FROM positions WHERE stream = ?", (stream,)).fetchone())
        return row[0] if row else 0

    def _append(self, records: list[AuditRecord], stream: str, stream_seq: int) -> int:
        with self._lock:
            db = self._writer
            if db is None:
                raise RuntimeError("store is not open")
            seq, prev = self._tail
            ids = [r.event_id for r in records]
            known = {row[0] for chunk in range(0, len(ids), 500) for row in db.execute(
                f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(ids[chunk:chunk + 500]))})",
                ids[chunk:chunk + 500])}
            rows = []
            for r in records:
                if r.event_id in known:
                    continue
                known.add(r.event_id)
                seq += 1
                r = replace(r, seq=seq, prev_hash=prev)
                prev = record_hash(prev, r)
                rows.append((seq, r.event_id, r.type, r.actor, r.action, r.user_id, r.door_id, r.credential_id,
                             r.outcome, r.reason, r.revision, r.source_time_us, r.stored_time_us, r.envelope,
                             r.prev_hash, prev, r.causal_rank))
            if not rows and not stream:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(f"INSERT INTO events ({COLUMNS}) VALUES ({','.join('?' * 17)})", rows)
                if stream:
                    # The tracking row: where this stream's ingest resumes, in the same transaction.
                    db.execute("INSERT INTO positions VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET "
                               "stream_seq = max(stream_seq, excluded.stream_seq)", (stream, stream_seq))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._tail = (seq, prev)
            return len(rows)

    async def read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        return await asyncio.to_thread(self._read, query, after_seq, limit)

    def _read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        where, params = _where(query)
        where.append("seq > ?")
        params.append(after_seq)
        sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        return [_record(r) for r in self._reader().execute(sql, (*params, limit))]

    async def read_occurred(self, query: AuditQuery,
                            after: tuple[int, int, int] | None) -> AsyncGenerator[AuditRecord, None]:
        tail = self._tail[0]  # the snapshot: rows stored after this call began are not included
        while True:
            page = await asyncio.to_thread(self._read_occurred, query, after, tail)
            for r in page:
                yield r
            if len(page) < PAGE:
                return
            after = occurrence_key(page[-1])

    def _read_occurred(self, query: AuditQuery, after: tuple[int, int, int] | None,
                       tail: int) -> list[AuditRecord]:
        where, params = _where(query)
        where.append("seq <= ?")
        params.append(tail)
        if after is not None:
            # A row value: the index is walked from the key, not filtered up to it.
            where.append("(source_time_us, causal_rank, seq) > (?, ?, ?)")
            params += list(after)
        # Named, so a selective filter (a type) never makes the planner sort the whole range per page.
        # No such index per user: with random user ids it cost a third of the ingest rate,
        # so a user's range walks the time index (constant memory, every row of the range).
        index = "ix_events_door_occurred" if query.door_id else "ix_events_occurred"
        if query.door_id:
            where.append("door_id <> ''")  # what the partial index holds
        sql = (f"SELECT {COLUMNS} FROM events INDEXED BY {index} WHERE {' AND '.join(where)} "
               "ORDER BY source_time_us, causal_rank, seq LIMIT ?")
        return [_record(r) for r in self._reader().execute(sql, (*params, PAGE))]

    async def last_seq(self) -> int:
        return self._tail[0]

    async def verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        return await asyncio.to_thread(self._verify, start_us, end_us)

    def _verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        db = self._reader()
        first = db.execute("SELECT min(seq) FROM events WHERE stored_time_us >= ?", (start_us,)).fetchone()[0]
        if first is None:
            return 0, None
        anchor = db.execute("SELECT seq, hash FROM events WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                            (first,)).fetchone()
        prev_seq, prev_hash = (anchor[0], bytes(anchor[1])) if anchor else (0, GENESIS)
        end = end_us or 2**62
        cursor = db.execute(f"SELECT {COLUMNS} FROM events WHERE seq >= ? AND stored_time_us < ? ORDER BY seq",
                            (first, end))
        return verify((_record(r) for r in cursor), prev_hash, prev_seq)

    async def park(self, stream: str, stream_seq: int, raw: bytes, error: str) -> None:
        def write() -> None:
            with self._lock:
                if self._writer is None:
                    raise RuntimeError("store is not open")
                self._writer.execute("INSERT OR IGNORE INTO parked VALUES (?, ?, ?, ?)",
                                     (stream, stream_seq, raw, error))
        await asyncio.to_thread(write)

    async def parked(self) -> list[tuple[str, int, bytes, str]]:
        rows = await asyncio.to_thread(
            lambda: self._reader().execute("SELECT stream, stream_seq, raw, error FROM parked").fetchall())
        return [(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
