"""The decision spool: unlock decision events on local disk until JetStream has them.

Append-only SQLite file per worker process (WAL, synchronous=FULL). The
publisher reads the oldest rows, publishes them in order and deletes a row
only after its PubAck, so a NATS outage only makes the file grow.

One process per spool: two publishers draining one file would publish its rows
twice and out of order. Opening takes an exclusive `flock` on `<spool>.lock`
(released by the kernel when the process dies, however it dies); a second
opener, e.g. a worker whose parent was restarted while it lived on, fails loudly.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from services.access.adapters.sqlite_files import open_durable, write_all


class SpoolInUse(RuntimeError):
    """Another process holds this decision spool."""


class SqliteDecisionSpool:
    """The `DecisionSpool` port on SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # The first use may come from two worker threads at once (the publisher's count, the
        # spiller's append): without this, both would flock and the second fail as "in use".
        self._opening = threading.RLock()

    def open(self) -> None:
        """Take the spool for this process (idempotent); SpoolInUse if another one has it."""
        with self._opening:
            self._open()

    def _open(self) -> None:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SpoolInUse(f"the decision spool {self.path} is in use by another process") from None
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._db()

    def _db(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        with self._opening:
            if self._lock_fd is None:
                self._open()
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
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
