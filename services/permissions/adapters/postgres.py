"""PostgreSQL unit of work and group commit: one transaction, its revision, its events, its outbox rows.

A write transaction starts by taking the next revision from `revision_counter`
(UPDATE ... RETURNING, sent together with BEGIN). The row lock is held until
commit, so transactions run one at a time: revisions are contiguous, grow in
commit order, and everything a write reads is the latest committed state (no
write skew is possible).

Group commit: writes that arrive while a transaction holds the lock wait in
`write_queue.WriteQueue`; the next transaction runs all of them (up to
`max_group`) one after the other, each behind a savepoint, so one write's error
rolls back only that write. They share the transaction's revision (a revision
is a commit, not a write), its one lock hold, its one fsync and its one relay
wake-up. A group of one runs without savepoints, as a single write always did.

At commit the events go to `outbox` in the same transaction, in one statement
with the NOTIFY that wakes the relay, sent together with the COMMIT. A
rolled-back write leaves no revision, row or event behind. With tracing on,
each outbox row keeps the W3C `traceparent` of the span current when its event
was queued (its RPC's server span), so the relay publishes it in that write's trace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from latchkit import envelope, tracing
from latchkit.errors import FailedPrecondition, ServiceError, Unavailable
from latchkit.identity import actor
from services.permissions.adapters import write_queue
from services.permissions.adapters.postgres_store import (
    ForeignKeyViolation,
    PostgresIdempotencyStore,
    PostgresPermissionsStore,
)
from services.permissions.migrations import sqlalchemy_url
from services.permissions.ports import Committed, Together

log = logging.getLogger("latchkey.permissions.db")
T = TypeVar("T")
NOTIFY_CHANNEL = "latchkey_outbox"
BEGIN_AND_TAKE_REVISION = (
    "BEGIN; UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 RETURNING revision")
SAVEPOINT = "SAVEPOINT write"
NEXT_SAVEPOINT = "RELEASE SAVEPOINT write; SAVEPOINT write"
ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT write"
MAX_GROUP = 32
WRITER_CONNECT_TIMEOUT_S = 5
# The events and the relay's wake-up in one statement (a data-modifying CTE always runs).
# Each row keeps its write's trace (NULL when tracing is off).
OUTBOX_INSERT = (
    "WITH written AS (INSERT INTO outbox (revision, idx, event_id, subject, payload, traceparent) "
    "SELECT :revision, i, e, s, p, tp "
    "FROM unnest(CAST(:idx AS integer[]), CAST(:event_ids AS uuid[]), "
    "CAST(:subjects AS text[]), CAST(:payloads AS bytea[]), CAST(:traceparents AS text[])) "
    "AS t(i, e, s, p, tp) RETURNING 1) "
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
)


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """`:name` placeholders (readable SQL) -> psycopg's `%(name)s`; `::type` casts are left alone."""
    return _PLACEHOLDER.sub(r"%(\1)s", sql)


_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@contextlib.contextmanager
def _references():
    try:
        yield
    except psycopg.errors.ForeignKeyViolation as exc:
        raise ForeignKeyViolation(exc.diag.constraint_name or "") from None


class MissingRow(RuntimeError):
    """A statement that must return a row returned none: an internal error, never the caller's."""

    def __init__(self, sql: str) -> None:
        super().__init__(f"expected a row from {' '.join(sql.split()[:3])} ..., got none")


class PostgresUnitOfWork:
    """`ports.UnitOfWork`: one transaction on one psycopg connection (SQLAlchemy provides the pool).

    Statements go to psycopg directly: on the write path every statement runs
    under the revision lock, and psycopg's prepared statements cost about half
    of a SQLAlchemy `text()` round trip. `rows`/`row`/`execute` are for the
    adapters of this package (and offline readers such as the view rebuild).
    """

    def __init__(self, conn: psycopg.AsyncConnection, revision: int | None) -> None:
        self.conn = conn
        self.revision = revision or 0
        self.events: list[QueuedEvent] = []
        self.cancelled = False
        self.store = PostgresPermissionsStore(self)
        self.idempotency = PostgresIdempotencyStore(self)

    async def rows(self, sql: str, **params: Any) -> list[dict]:
        async with self.conn.cursor(row_factory=dict_row) as cur:
            with _references():
                await cur.execute(_pyformat(sql), params)
            return await cur.fetchall() if cur.description else []

    async def row(self, sql: str, **params: Any) -> dict | None:
        rows = await self.rows(sql, **params)
        return rows[0] if rows else None

    async def row_required(self, sql: str, **params: Any) -> dict:
        """The one row a statement must return (an INSERT/UPDATE ... RETURNING of a checked row).

        None here is a bug (the use case checked the row first, under its lock), so it raises
        `MissingRow` naming the statement: not a `ServiceError`, the caller gets no domain status.
        """
        found = await self.row(sql, **params)
        if found is None:
            raise MissingRow(sql)
        return found

    async def execute(self, sql: str, **params: Any) -> int:
        async with self.conn.cursor() as cur:
            with _references():
                await cur.execute(_pyformat(sql), params)
            return cur.rowcount

    async def execute_many(self, sql: str, rows: list[dict]) -> None:
        if rows:
            async with self.conn.cursor() as cur:
                await cur.executemany(_pyformat(sql), rows)

    def emit(self, payload, aggregate_key: str) -> None:
        """Queue an event for this transaction's revision; written to the outbox at commit.

        Called from the write's own context: the event keeps its caller and its trace."""
        self.events.append(QueuedEvent(payload, aggregate_key, actor(), tracing.current_traceparent()))

    def cancel(self) -> None:
        """Roll back at the end (an idempotent replay must not consume a revision)."""
        self.cancelled = True


@dataclasses.dataclass(frozen=True, slots=True)
class QueuedEvent:
    payload: Any
    aggregate_key: str
    actor: str
    traceparent: str | None


async def _write_outbox_and_commit(conn: psycopg.AsyncConnection, revision: int,
                                   events: list[QueuedEvent]) -> None:
    count = len(events)
    idx, event_ids, subjects, payloads, traceparents = [], [], [], [], []
    for index, event in enumerate(events):
        env = envelope.build(event.payload, actor=event.actor, aggregate_key=event.aggregate_key,
                             aggregate_version=revision, revision=revision,
                             revision_event_index=index, revision_event_count=count)
        idx.append(index)
        event_ids.append(env.event_id)
        subjects.append(envelope.subject(env))
        payloads.append(env.SerializeToString())
        traceparents.append(event.traceparent)
    # Client-side binding lets COMMIT ride in the same round trip (a multi-statement
    # query); if the insert fails, PostgreSQL skips the COMMIT and the caller rolls back.
    async with psycopg.AsyncClientCursor(conn) as cur:
        await cur.execute(_pyformat(OUTBOX_INSERT) + "; COMMIT", {
            "revision": revision, "idx": idx, "event_ids": event_ids, "subjects": subjects,
            "payloads": payloads, "traceparents": traceparents})


class _StaleWriter(psycopg.OperationalError):
    """The write connection failed on the transaction's first statement: no write has run."""


def _units(group: list[write_queue.Pending]) -> list[list[write_queue.Pending]]:
    """The group as it runs: next writes of one kind and caller together (one call), others alone."""
    units: list[list[write_queue.Pending]] = []
    for item in group:
        if units and item.together_key is not None and units[-1][0].together_key == item.together_key:
            units[-1].append(item)
        else:
            units.append([item])
    return units


def _connection_lost(exc: BaseException) -> bool:
    """The transaction cannot go on (as opposed to one statement's error, which a savepoint undoes)."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError, sa_exc.OperationalError,
                            sa_exc.InterfaceError, asyncio.CancelledError))


def _conflict(exc: sa_exc.IntegrityError | psycopg.errors.IntegrityError) -> FailedPrecondition:
    """The database's last word on a constraint (the checks in the use cases run first)."""
    diag = getattr(getattr(exc, "orig", exc), "diag", None)
    constraint = getattr(diag, "constraint_name", None) or "a constraint"
    return FailedPrecondition(f"the change conflicts with the current state ({constraint})")


def _for_caller(exc: Exception) -> Exception:
    """One write's error as its caller gets it."""
    return _conflict(exc) if isinstance(exc, psycopg.errors.IntegrityError) else exc


@contextlib.contextmanager
def translate_errors():
    """Infrastructure failures become statuses a client can act on, never UNKNOWN."""
    try:
        yield
    except (sa_exc.IntegrityError, psycopg.errors.IntegrityError) as exc:
        raise _conflict(exc) from None
    except (sa_exc.TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError,
            psycopg.InterfaceError, OSError) as exc:
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        raise Unavailable("the permissions database is unavailable or overloaded; retry") from None


class Database:
    """`ports.UnitOfWorkFactory`: owns the engine; hands out units of work."""

    def __init__(self, dsn: str, pool_size: int = 10, *, max_group: int = 32,
                 queue_budget_s: float = 1.0) -> None:
        # Statements go to psycopg directly, so SQLAlchemy never sees a disconnect and
        # never discards the dead connections a database restart leaves in the pool:
        # without a check, each failed one write in turn. The pre-ping (one round trip,
        # outside the revision lock, in autocommit) finds the first dead one and
        # invalidates the whole pool, so a restart costs only the writes in flight.
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(dsn), pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
            pool_timeout=5,
        )
        self.pool_size = pool_size
        # Writes queue here, not in the pool: reads never wait behind them. At most MAX_GROUP writes a
        # group keeps a transaction's subtransactions (one per savepoint) inside PostgreSQL's
        # per-backend cache of 64, past which every snapshot taken anywhere gets slower.
        if not 1 <= max_group <= MAX_GROUP:
            raise ValueError(f"max_group must be 1..{MAX_GROUP}, not {max_group}")
        self.writes = write_queue.WriteQueue(self._run_group, max_group=max_group, budget_s=queue_budget_s)
        # The write groups run one at a time, so they keep one connection of their own: no pool
        # checkout or pre-ping per transaction. A connection that failed is dropped, and the next
        # group opens a new one (a database restart costs only the group in flight).
        self._dsn = dsn
        self._writer: psycopg.AsyncConnection | None = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # The engine is built on psycopg's async driver: this is its connection.
            yield cast(psycopg.AsyncConnection, raw.driver_connection)

    @contextlib.asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[PostgresUnitOfWork]:
        with translate_errors():
            async with self._connection() as conn, conn.transaction():
                uow = PostgresUnitOfWork(conn, None)
                if snapshot:
                    await uow.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield uow

    async def write(self, work: Callable[[PostgresUnitOfWork], Awaitable[T]],
                    together: Together[Any, T] | None = None) -> Committed[T]:
        """`ports.UnitOfWorkFactory.write`: the work joins the next group commit. Writes of one
        `together.kind` from one caller that meet in a group run as one set-based call (their
        events then carry that caller, and the trace of the first of them)."""
        key = (together.kind, actor()) if together is not None else None
        committed: Committed[T] = await self.writes.submit(work, together, key)
        return committed

    async def _run_group(self, group: list[write_queue.Pending]) -> None:
        """One transaction for the group; settles every write's future (the queue's contract)."""
        try:
            with translate_errors():
                try:
                    try:
                        await self._group_transaction(await self._writer_connection(), group)
                    except _StaleWriter:
                        # Dead before any write ran (the database restarted since the last group):
                        # nothing was done, so the group starts again on a new connection, once.
                        await self._drop_writer()
                        await self._group_transaction(await self._writer_connection(), group)
                except BaseException as exc:
                    if _connection_lost(exc):
                        await self._drop_writer()
                    raise
        except BaseException as exc:
            # Nothing of the group committed: every write not yet answered gets the error.
            error = (exc if isinstance(exc, ServiceError) or not _connection_lost(exc)
                     else Unavailable("the permissions database is unavailable; retry"))
            for item in group:
                if not item.future.done() and not item.deferred:
                    item.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise

    async def _writer_connection(self) -> psycopg.AsyncConnection:
        if self._writer is None or self._writer.closed or self._writer.broken:
            self._writer = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True,
                                                                 connect_timeout=WRITER_CONNECT_TIMEOUT_S)
        return self._writer

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    async def _group_transaction(self, conn: psycopg.AsyncConnection, group: list[write_queue.Pending]) -> None:
        # The transaction is driven by hand (the connection is in autocommit mode, so psycopg
        # sends no BEGIN of its own) so that BEGIN and the revision travel in one round trip
        # (a parameterless multi-statement query). Every write pays each round trip under
        # the revision lock, so each one saved is throughput as well as latency.
        shared = len(group) > 1
        try:
            try:
                async with conn.cursor() as cur:
                    await cur.execute(BEGIN_AND_TAKE_REVISION + (f"; {SAVEPOINT}" if shared else ""))
                    cur.nextset()  # past BEGIN's result to the UPDATE's
                    taken = await cur.fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise _StaleWriter() from exc
            if taken is None:
                raise MissingRow(BEGIN_AND_TAKE_REVISION)
            revision: int = taken[0]
            events: list[QueuedEvent] = []
            answered: list[tuple[write_queue.Pending, Any]] = []
            kept = False  # the last write kept changes after the savepoint: move it past them
            keys: set[str] = set()  # the aggregates this transaction's events are about
            deferred: list[write_queue.Pending] = []
            units = collections.deque(_units(group))
            while units:
                unit = [item for item in units.popleft() if not item.future.done()]  # gone: its caller gave up
                if not unit:
                    continue
                if kept:
                    await conn.execute(NEXT_SAVEPOINT)
                    kept = False
                uow = PostgresUnitOfWork(conn, revision)
                try:
                    values = await unit[0].run_all(uow, unit) if len(unit) > 1 else [await unit[0].run(uow)]
                except Exception as exc:
                    if _connection_lost(exc) or not shared:
                        raise  # the whole transaction is lost (or was only this write): nothing commits
                    await conn.execute(ROLLBACK_TO_SAVEPOINT)
                    if len(unit) > 1:  # one of them is wrong: each on its own, so only that one fails
                        units.extendleft([item] for item in reversed(unit))
                    elif not unit[0].future.done():
                        unit[0].future.set_exception(_for_caller(exc))
                    continue
                if len(unit) > 1:
                    touched = [unit[0].together.touches(value) for value in values]
                    if None in touched or len(set(touched)) < len(touched):
                        # Two of them changed one aggregate (or one cannot tell): one by one, so
                        # they get revisions of their own.
                        await conn.execute(ROLLBACK_TO_SAVEPOINT)
                        units.extendleft([item] for item in reversed(unit))
                        continue
                if uow.cancelled or not uow.events:
                    if shared:  # a replay or a no-op leaves nothing, as on its own
                        await conn.execute(ROLLBACK_TO_SAVEPOINT)
                else:
                    mine = {event.aggregate_key for event in uow.events}
                    if mine & keys:
                        # Consumers apply an aggregate's events by version (= revision): two writes
                        # of one revision on the same aggregate could not be told apart. These run
                        # again, first in the next transaction, with the next revision.
                        await conn.execute(ROLLBACK_TO_SAVEPOINT)
                        deferred.extend(unit)
                        continue
                    keys |= mine
                    events.extend(uow.events)
                    kept = True
                answered.extend(zip(unit, values, strict=True))
            self.writes.defer(deferred)
            if events:
                await _write_outbox_and_commit(conn, revision, events)
            else:
                # Nothing changed (or replays only): give the revision back; the
                # answer is the revision already committed.
                revision -= 1
                await conn.execute("ROLLBACK")
            for item, value in answered:
                if not item.future.done():
                    item.future.set_result(Committed(value, revision))
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise

    async def warm(self) -> None:
        """Open the pool's connections before the first burst of writes needs them.

        A new connection costs milliseconds; opened one by one under load, they were
        the spikes in write latency. Not fatal: without the database the pool stays
        lazy and requests get UNAVAILABLE as before.
        """
        size = self.pool_size
        opened = 0
        all_open = asyncio.Event()

        async def hold() -> None:
            nonlocal opened
            async with self._connection():
                opened += 1
                if opened == size:
                    all_open.set()
                await all_open.wait()

        try:
            await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(size))), timeout=30)
            await self._writer_connection()
        except Exception as exc:  # a warm-up only: any failure leaves the pool lazy
            all_open.set()
            log.warning("could not open the database pool ahead of use", extra={"error": repr(exc)})

    async def current_revision(self) -> int:
        async with self.read() as uow:
            return await uow.store.revision()

    async def close(self) -> None:
        await self.writes.close()
        await self._drop_writer()
        await self.engine.dispose()
