"""The embedded unlock view: SQLite in WAL mode on local disk.

Readers (every worker process) and the one projector share the file; WAL lets
reads proceed during a write. Point reads are short (one indexed row, no
fsync), so they run on the event loop; the projector's batched, fsynced writes run in a
thread. Rows are compared in SQL by (version, deny, value): a lower version
never overwrites a higher one, at an equal version the revoke wins, then the
greater bytes, so the result is the same whatever the order (the rule CQL's
equal-timestamp resolution gives the ScyllaDB view).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

from services.access.ports import CredentialRow, PairRow, ViewBatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    door_id TEXT NOT NULL, user_id TEXT NOT NULL, version INTEGER NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (door_id, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    credential_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind INTEGER NOT NULL, secret_hash BLOB NOT NULL,
    revoked INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_credentials_secret ON credentials (kind, secret_hash);
CREATE TABLE IF NOT EXISTS progress_by_instance (instance TEXT PRIMARY KEY, watermark INTEGER NOT NULL,
    partial TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS freshness_by_instance (instance TEXT PRIMARY KEY, fresh_at REAL NOT NULL) WITHOUT ROWID;
"""
LEGACY_PROGRESS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'progress'"
"""Before progress was kept per instance: one row (id = 1); an instance with no progress starts from it."""

PartialProgress = dict[int, tuple[int, list[int]]]


def merge_progress(stored: tuple[int, PartialProgress], batch: ViewBatch) -> tuple[int, PartialProgress]:
    """The greater watermark, and every index either side has seen of the revisions above it."""
    watermark = max(stored[0], batch.watermark)
    merged: dict[int, tuple[int, set[int]]] = {}
    for partial in (stored[1], batch.partial):
        for revision, (total, seen) in partial.items():
            if revision > watermark:
                known = merged.setdefault(revision, (total, set()))
                merged[revision] = (max(known[0], total), known[1] | set(seen))
    return watermark, {r: (total, sorted(seen)) for r, (total, seen) in merged.items()}


def _decode(partial: str) -> PartialProgress:
    return {int(k): (v[0], list(v[1])) for k, v in json.loads(partial).items()}


class SqliteUnlockView:
    def __init__(self, path: Path, instance: str = "local") -> None:
        self.path = path
        self.instance = instance
        """Whose progress this view records and reads."""
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        writer.executescript(SCHEMA)
        if writer.execute(LEGACY_PROGRESS).fetchone():
            writer.execute("INSERT OR IGNORE INTO progress_by_instance SELECT ?, watermark, partial FROM progress "
                           "WHERE id = 1", (self.instance,))
        self._writer = writer
        self._reader = self._connect()

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("view is not open")
        return self._reader

    async def apply(self, batch: ViewBatch) -> None:
        await asyncio.to_thread(self._apply, batch)

    def _apply(self, batch: ViewBatch) -> None:
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise RuntimeError("view is not open")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO pairs VALUES (?, ?, ?, ?) ON CONFLICT (door_id, user_id) DO UPDATE SET "
                    "version = excluded.version, payload = excluded.payload "
                    "WHERE (excluded.version, length(excluded.payload) = 0, excluded.payload) "
                    "> (pairs.version, length(pairs.payload) = 0, pairs.payload)",
                    [(p.door_id, p.user_id, p.version, p.payload) for p in batch.pairs])
                conn.executemany(
                    "INSERT INTO credentials VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (credential_id) DO UPDATE SET "
                    "user_id = excluded.user_id, kind = excluded.kind, secret_hash = excluded.secret_hash, "
                    "revoked = excluded.revoked, version = excluded.version "
                    "WHERE (excluded.version, excluded.revoked, excluded.user_id, excluded.kind, excluded.secret_hash) "
                    "> (credentials.version, credentials.revoked, credentials.user_id, credentials.kind, "
                    "credentials.secret_hash)",
                    [(c.credential_id, c.user_id, c.kind, c.secret_hash, int(c.revoked), c.version)
                     for c in batch.credentials])
                watermark, partial = merge_progress(self._progress(conn), batch)
                conn.execute("INSERT OR REPLACE INTO progress_by_instance VALUES (?, ?, ?)",
                             (self.instance, watermark, json.dumps({str(k): v for k, v in partial.items()})))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None:
        row = self._reader_conn().execute(
            "SELECT version, payload FROM pairs WHERE door_id = ? AND user_id = ?", (door_id, user_id)).fetchone()
        return PairRow(door_id, user_id, row[0], bytes(row[1])) if row else None

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        row = self._reader_conn().execute(
            "SELECT credential_id, user_id, revoked, version FROM credentials WHERE kind = ? AND secret_hash = ? "
            "ORDER BY revoked ASC, version DESC, credential_id DESC LIMIT 1", (kind, secret_hash)).fetchone()
        if row is None:
            return None
        return CredentialRow(row[0], row[1], kind, secret_hash, bool(row[2]), row[3])

    def _progress(self, conn: sqlite3.Connection) -> tuple[int, PartialProgress]:
        row = conn.execute("SELECT watermark, partial FROM progress_by_instance WHERE instance = ?",
                           (self.instance,)).fetchone()
        return (row[0], _decode(row[1])) if row else (0, {})

    async def progress(self) -> tuple[int, PartialProgress]:
        return self._progress(self._reader_conn())

    async def watermark(self) -> int:
        row = self._reader_conn().execute("SELECT watermark FROM progress_by_instance WHERE instance = ?",
                                          (self.instance,)).fetchone()
        return row[0] if row else 0

    async def all_pairs(self) -> list[PairRow]:
        rows = self._reader_conn().execute("SELECT door_id, user_id, version, payload FROM pairs").fetchall()
        return [PairRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def record_fresh(self, at: float) -> None:
        await asyncio.to_thread(self._record_fresh, at)

    def _record_fresh(self, at: float) -> None:
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise RuntimeError("view is not open")
            # Several times a second, and worth no fsync: a proof lost in a power cut leaves an
            # older one, which only keeps fail-closed doors shut a little longer.
            conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute("INSERT INTO freshness_by_instance VALUES (?, ?) ON CONFLICT (instance) DO UPDATE "
                             "SET fresh_at = excluded.fresh_at WHERE excluded.fresh_at > fresh_at",
                             (self.instance, at))
            finally:
                conn.execute("PRAGMA synchronous=FULL")

    async def fresh_at(self) -> float | None:
        row = self._reader_conn().execute("SELECT fresh_at FROM freshness_by_instance WHERE instance = ?",
                                          (self.instance,)).fetchone()
        return row[0] if row else None
