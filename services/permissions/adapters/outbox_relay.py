"""The outbox relay: PostgreSQL `outbox` -> JetStream, in revision order, nothing lost.

- One leader: the relay holding a PostgreSQL session advisory lock publishes;
  others (other replicas) wait for the lock, and take over when the leader's
  session ends. Several relays with SKIP LOCKED would break per-key order.
- Wake-ups: LISTEN/NOTIFY is a hint (sent at commit by each write); the relay
  also polls, so a lost notification costs at most one poll interval.
- Each round publishes the oldest rows in (revision, idx) order, pipelined,
  with the event id as `Nats-Msg-Id`, and deletes a row only after its PubAck.
  A crash between the ack and the delete re-publishes the row; JetStream
  drops it as a duplicate within the window, consumers by version after it.
- NATS down: publishing fails, rows stay, writes keep committing; the relay
  retries with backoff and drains the backlog, in order, once NATS is back.
  The wait goes back to its shortest after every successful round (leading
  never returns, so resetting on return would never happen), and an ack not
  back within `ACK_WAIT_SECONDS` counts as a dead connection.
  Rows are never relayed by "id > last seen": ids are taken at insert but
  become visible at commit, so a later id can commit first and a "last seen"
  cursor would skip the earlier one for good. The table itself is the queue,
  and a late commit can never be skipped.
- Stopping: `stop()` lets the round in flight finish (published and deleted)
  before it cancels the relay, so a graceful stop re-publishes nothing; a
  cancel or a kill mid-round is safe too (the rows stay, see above).
- Its own process by default (`services/permissions/relay.py`): its gauges are
  kept per process and read as the live maximum, so the permissions metrics
  endpoint shows the relay child's values, not the main process's zeros.
- Tracing on: a row that kept its write's `traceparent` is published under a
  producer span child of it, and the message carries the span's `traceparent`
  header (docs/tracing.md). Off, the round is what it always was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import psycopg
from prometheus_client import Gauge, Histogram

from latchkit import bus, tracing
from latchkit.bus import BusSettings
from latchkit.retry import Backoff, retry_forever
from services.permissions.adapters.postgres import NOTIFY_CHANNEL

log = logging.getLogger("latchkey.permissions.relay")
RELAY_LOCK_KEY = 740_1001
# "livemax": in prometheus multiprocess mode (latchkit/metrics_files.py) the endpoint shows the
# largest value of the live processes; the main process, which imports this module but does not
# relay, holds zeros, and a dead relay's files are removed when it is reaped (relay.py).
BACKLOG = Gauge("latchkey_outbox_backlog", "Outbox rows not yet acknowledged by JetStream",
                multiprocess_mode="livemax")
PUBLISH_LAG = Histogram("latchkey_outbox_publish_lag_seconds", "Commit to JetStream PubAck",
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5, 30))
LEADER = Gauge("latchkey_outbox_relay_leader", "1 while this process leads the relay",
               multiprocess_mode="livemax")
ACK_WAIT_SECONDS = 1.0
"""How long the relay waits for a round's PubAcks (pipelined: they come back together) before it
drops the connection and retries. A
healthy local broker answers in milliseconds; with `allow_reconnect=False` a broker that
went away leaves the pending acks unanswered, and each second spent waiting here is a
second in which no permission change is published."""


def libpq_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


class OutboxRelay:
    def __init__(self, dsn: str, bus: BusSettings, *, batch: int = 256, poll_seconds: float = 0.5) -> None:
        self.dsn = libpq_dsn(dsn)
        self.bus = bus
        self.batch = batch
        self.poll = poll_seconds
        self.is_leader = False
        self.stopping = False
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()
        """Held for a whole round (publish, acks, delete): `stop` waits for it."""

    async def run(self) -> None:
        """Forever: become leader, then relay; any failure drops leadership and retries."""
        await retry_forever("relay round", self._lead_once, log)

    async def stop(self, task: asyncio.Task, grace_s: float) -> None:
        """Cancel `task` (running `run`) once the round in flight, if any, is published and deleted.

        Holding the round lock while cancelling means no new round starts; a round still
        going after `grace_s` (a broker that stopped answering) is cancelled as it is:
        its rows stay in the outbox for the next relay.
        """
        self.stopping = True
        held = False
        try:
            held = await asyncio.wait_for(self._round.acquire(), grace_s)
        except TimeoutError:
            log.warning("the relay round did not finish in time; cancelling it", extra={"grace_seconds": grace_s})
        try:
            task.cancel()
            # Bounded: a cancel swallowed by a library must not keep the process from exiting.
            _, stuck = await asyncio.wait([task], timeout=grace_s)
            if stuck:
                log.warning("the relay did not stop after its cancel", extra={"grace_seconds": grace_s})
        finally:
            if held:
                self._round.release()

    async def _lead_once(self, backoff: Backoff) -> None:
        try:
            await self._lead(backoff)
        finally:
            self.is_leader = False
            LEADER.set(0)

    async def _lead(self, backoff: Backoff) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            # Blocks until no other relay session holds the lock (it dies or steps down).
            await conn.execute("SELECT pg_advisory_lock(%s)", (RELAY_LOCK_KEY,))
            self.is_leader = True
            LEADER.set(1)
            log.info("outbox relay is leader")
            listener = asyncio.create_task(self._listen(), name="outbox-listen")
            try:
                async with bus.session(self.bus, name="permissions-relay") as (_, js):
                    await self._relay(conn, js, listener, backoff)
            finally:
                listener.cancel()

    async def _relay(self, conn, js, listener: asyncio.Task, backoff: Backoff) -> None:
        while True:
            bus.raise_if_cancelled()
            self._wake.clear()
            async with self._round:
                published = await self.publish_round(conn, js)
            backoff.reset()  # a round went through: the next outage starts from the shortest wait
            if published == self.batch:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll)
            except TimeoutError:
                if listener.done():
                    listener.result()  # the listener died: fail this round loudly

    async def _listen(self) -> None:
        """A second session just for LISTEN: its generator reads every notification."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            async for _ in conn.notifies():
                self._wake.set()

    async def publish_round(self, conn: psycopg.AsyncConnection, js) -> int:
        rows = await (await conn.execute(
            "SELECT revision, idx, event_id::text, subject, payload, create_time, traceparent FROM outbox "
            "ORDER BY revision, idx LIMIT %s", (self.batch,))).fetchall()
        if not rows:
            BACKLOG.set(0)
            return 0
        # Pipelined: all sent on one connection in order (JetStream stores them in
        # that order); acks awaited in order, and only an acked prefix is deleted.
        if tracing.ENABLED:
            futures = [await _publish_traced(js, subject, bytes(payload), event_id, traceparent)
                       for _, _, event_id, subject, payload, _, traceparent in rows]
        else:
            futures = [await js.publish_async(subject, bytes(payload), headers={"Nats-Msg-Id": event_id})
                       for _, _, event_id, subject, payload, _, _ in rows]
        acked, error = await bus.acked_in_order([(future, 1) for future in futures], ACK_WAIT_SECONDS)
        if acked:
            last_rev, last_idx = rows[acked - 1][0], rows[acked - 1][1]
            await conn.execute("DELETE FROM outbox WHERE (revision, idx) <= (%s, %s)", (last_rev, last_idx))
            now = dt.datetime.now(dt.UTC)
            for row in rows[:acked]:
                PUBLISH_LAG.observe((now - row[5]).total_seconds())
        # A full round means more may be waiting; only then is counting worth a query.
        backlog = len(rows) - acked
        if len(rows) == self.batch:
            counted = await (await conn.execute("SELECT count(*) FROM outbox")).fetchone()
            backlog = counted[0] if counted is not None else backlog  # count(*) always has its row
        BACKLOG.set(backlog)
        if error is not None:
            raise error
        return acked


async def _publish_traced(js, subject: str, payload: bytes, event_id: str, traceparent: str | None):
    """Send one row (tracing on): in the write's trace when the row kept one, as before when not.

    The producer span is a child of the write's span (the row's `traceparent`) and
    covers the send; the message's `traceparent` header names the span, so the
    consumers continue the same trace. The ack is awaited after the span, with the
    rest of the round (the publishes are pipelined).
    """
    headers = {"Nats-Msg-Id": event_id}
    if traceparent is None:
        return await js.publish_async(subject, payload, headers=headers)
    with bus.publish_span(subject, headers, traceparent=traceparent) as traced:
        return await js.publish_async(subject, payload, headers=traced)
