"""PostgreSQL unit of work: one transaction, its revision, its events, its outbox rows.

Every write starts by taking the next revision from `revision_counter`
(UPDATE ... RETURNING). The row lock is held until commit, so writers run one
at a time: revisions are contiguous, grow in commit order, and everything a
write reads is the latest committed state (no write skew is possible). At
commit the events go to `outbox` in the same transaction, with a NOTIFY to
wake the relay. A rolled-back write leaves no revision, row or event behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from latchkit import envelope
from latchkit.identity import actor
from services.permissions.migrations import sqlalchemy_url

log = logging.getLogger("latchkey.permissions.db")
NOTIFY_CHANNEL = "latchkey_outbox"


class UnitOfWork:
    def __init__(self, conn: AsyncConnection, revision: int | None) -> None:
        self.conn = conn
        self.revision = revision or 0
        self.events: list = []
        self.cancelled = False
        self._actor = actor()

    async def rows(self, sql: str, **params: Any) -> list[dict]:
        result = await self.conn.execute(text(sql), params)
        return [dict(r._mapping) for r in result] if result.returns_rows else []

    async def row(self, sql: str, **params: Any) -> dict | None:
        rows = await self.rows(sql, **params)
        return rows[0] if rows else None

    async def execute(self, sql: str, **params: Any) -> int:
        return (await self.conn.execute(text(sql), params)).rowcount

    async def execute_many(self, sql: str, rows: list[dict]) -> None:
        if rows:
            await self.conn.execute(text(sql), rows)

    def emit(self, payload, aggregate_key: str) -> None:
        """Queue an event for this transaction's revision; written to the outbox at commit."""
        self.events.append((payload, aggregate_key))

    def cancel(self) -> None:
        """Roll back at the end (an idempotent replay must not consume a revision)."""
        self.cancelled = True

    async def _write_outbox(self) -> None:
        count = len(self.events)
        rows = []
        for index, (payload, key) in enumerate(self.events):
            env = envelope.build(payload, actor=self._actor, aggregate_key=key,
                                 aggregate_version=self.revision, revision=self.revision,
                                 revision_event_index=index, revision_event_count=count)
            rows.append({"revision": self.revision, "idx": index, "event_id": env.event_id,
                         "subject": envelope.subject(env), "payload": env.SerializeToString()})
        await self.conn.execute(
            text("INSERT INTO outbox (revision, idx, event_id, subject, payload) "
                 "VALUES (:revision, :idx, CAST(:event_id AS uuid), :subject, :payload)"), rows)
        await self.conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


class Database:
    """Owns the engine; hands out units of work."""

    def __init__(self, dsn: str, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(dsn), pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
            pool_timeout=5,
        )

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[UnitOfWork]:
        async with self.engine.connect() as conn:
            async with conn.begin():
                yield UnitOfWork(conn, None)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[UnitOfWork]:
        async with self.engine.connect() as conn:
            trans = await conn.begin()
            try:
                revision = (await conn.execute(text(
                    "UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 RETURNING revision"
                ))).scalar_one()
                uow = UnitOfWork(conn, revision)
                yield uow
                if uow.cancelled or not uow.events:
                    # Nothing changed (or a replay): give the revision back; the
                    # answer is the revision already committed.
                    await trans.rollback()
                    uow.revision = revision - 1
                    return
                await uow._write_outbox()
                await trans.commit()
            except BaseException:
                if trans.is_active:
                    await trans.rollback()
                raise

    async def current_revision(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(text("SELECT revision FROM revision_counter WHERE id = 1"))).scalar_one()

    async def close(self) -> None:
        await self.engine.dispose()
