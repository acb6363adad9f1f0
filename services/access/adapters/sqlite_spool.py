"""The decision spool: unlock decision events on local disk until JetStream has them.

Append-only SQLite file per worker process (WAL, synchronous=FULL). The
publisher reads the oldest rows, publishes them in order and deletes a row
only after its PubAck, so a NATS outage only makes the file grow.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from services.access.adapters.sqlite_files import open_durable, write_all


class SqliteDecisionSpool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_durable(self.path, "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY "
                                                 "AUTOINCREMENT, event_id TEXT NOT NULL, subject TEXT NOT NULL, "
                                                 "payload BLOB NOT NULL)")
        return self._conn

    async def append(self, rows: list[tuple[str, str, bytes]]) -> None:
        await asyncio.to_thread(self._append, rows)

    def _append(self, rows: list[tuple[str, str, bytes]]) -> None:
        write_all(self._db(), ("INSERT INTO spool (event_id, subject, payload) VALUES (?, ?, ?)", rows))

    async def oldest(self, limit: int) -> list[tuple[int, str, str, bytes]]:
        return await asyncio.to_thread(
            lambda: self._db().execute("SELECT seq, event_id, subject, payload FROM spool ORDER BY seq LIMIT ?",
                                       (limit,)).fetchall())

    async def delete_through(self, seq: int) -> None:
        await asyncio.to_thread(lambda: self._db().execute("DELETE FROM spool WHERE seq <= ?", (seq,)))

    async def count(self) -> int:
        return await asyncio.to_thread(lambda: self._db().execute("SELECT count(*) FROM spool").fetchone()[0])

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
