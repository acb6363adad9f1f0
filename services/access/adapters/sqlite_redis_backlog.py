"""The Redis backlog: keys the projector could not write to Redis, on local disk until it can.

One SQLite file per access instance (WAL, synchronous=FULL), written only by
the projector. A key is kept once however often it changed (the primary key),
so the file is bounded by the number of distinct keys, and only keys are kept:
the rows to write are read from the view when Redis answers again, which is
then at least as new as anything Redis missed. A restart does not lose it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from services.access.adapters.sqlite_files import open_durable, write_all

PairKey = tuple[str, str]
"""(door_id, user_id)"""
CredentialKey = tuple[int, bytes]
"""(kind, secret_hash)"""


class SqliteRedisBacklog:
    """The `RedisBacklog` port on SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_durable(
                self.path,
                "CREATE TABLE IF NOT EXISTS pairs (door_id TEXT NOT NULL, user_id TEXT NOT NULL, "
                "PRIMARY KEY (door_id, user_id)) WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS credentials (kind INTEGER NOT NULL, secret_hash BLOB NOT NULL, "
                "PRIMARY KEY (kind, secret_hash)) WITHOUT ROWID")
        return self._conn

    async def add(self, pairs: list[PairKey], credentials: list[CredentialKey]) -> None:
        """Durable when it returns."""
        await asyncio.to_thread(lambda: write_all(self._db(), ("INSERT OR IGNORE INTO pairs VALUES (?, ?)", pairs),
                                                  ("INSERT OR IGNORE INTO credentials VALUES (?, ?)", credentials)))

    async def take(self, limit: int) -> tuple[list[PairKey], list[CredentialKey]]:
        """Up to `limit` keys of each kind (they stay until `remove`)."""
        def read():
            db = self._db()
            return ([tuple(r) for r in db.execute("SELECT door_id, user_id FROM pairs LIMIT ?", (limit,))],
                    [tuple(r) for r in db.execute("SELECT kind, secret_hash FROM credentials LIMIT ?", (limit,))])

        return await asyncio.to_thread(read)

    async def remove(self, pairs: list[PairKey], credentials: list[CredentialKey]) -> None:
        await asyncio.to_thread(lambda: write_all(
            self._db(), ("DELETE FROM pairs WHERE door_id = ? AND user_id = ?", pairs),
            ("DELETE FROM credentials WHERE kind = ? AND secret_hash = ?", credentials)))

    async def count(self) -> int:
        def read():
            db = self._db()
            return (db.execute("SELECT count(*) FROM pairs").fetchone()[0]
                    + db.execute("SELECT count(*) FROM credentials").fetchone()[0])

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
