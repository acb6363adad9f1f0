"""The projector: PERMISSIONS stream -> unlock view -> Redis, acked only after both.

A durable pull consumer, re-created at every start at the first event above
the view's watermark; one logical projector per deployment (the access
service's first process runs it). Each round fetches a batch, writes Redis
(set-if-newer), then the view (one transaction, versions compared in the
store, with the watermark), then acks. A crash before the ack redelivers the batch; applying it again
changes nothing. Events carry (revision, index, count): the projector records
the highest revision below which every event has been applied (the
watermark), which is what `Unlock` reports and what `min_revision` waits for.

Redis unreachable: the view is the truth, so the round still applies and
acks, but first the projector lets its Redis lease lapse (workers trust Redis
only under it, see redis_cache.py) and records the keys Redis missed in the
durable backlog (sqlite_redis_backlog.py). Once Redis answers, the lease loop
writes those keys from the view and only then takes the lease again. So
Redis never answers with less than the view has, through outages, partitions
and restarts, and the backlog is bounded by the number of distinct keys.
"""

from __future__ import annotations

import asyncio
import logging
import time

from latchkey.events.v1 import events_pb2 as ev
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from latchkit import bus, envelope, tracing
from latchkit.bus import (
    PERMISSIONS_STREAM,
    PERMISSIONS_SUBJECT_PREFIX,
    BusSettings,
    Puller,
)
from latchkit.retry import Backoff, retry_forever
from services.access.ports import (
    CredentialRow,
    PairRow,
    RedisBacklog,
    UnlockCache,
    UnlockView,
    ViewBatch,
)
from services.access.projector_watchdog import BrokerProgress, StallClock, end_task, stack_of

log = logging.getLogger("latchkey.access.projector")
DURABLE_PREFIX = "access-projector-"
IDLE_CONSUMER_SECONDS = 24 * 3600
FETCH_WAIT_SECONDS = 0.02  # busy: bounds how long an event waits in a partial batch
REPLAY_CHUNK = 500
REDIS_BACKLOG = Gauge("latchkey_access_redis_backlog", "Keys the projector must still write to Redis")
REDIS_TRUSTED = Gauge("latchkey_access_redis_trusted", "1 while this instance's projector holds its Redis lease")
HEARTBEAT = Gauge("latchkey_access_projector_heartbeat_timestamp_seconds",
                  "When the projector's pipeline last went round its loop (unix time)")
STALLED = Gauge("latchkey_access_projector_stalled",
                "1 while the stream has work for the projector and its consumer has not moved for the stall limit")
RESTARTS = Counter("latchkey_access_projector_restarts", "Projector pipelines restarted by the watchdog", ["why"])


def advance(watermark: int, partial: dict[int, tuple[int, list[int]]], revision: int, index: int,
            count: int) -> int:
    """Record one event; return the new watermark (contiguous revisions fully applied)."""
    if revision > watermark:
        total, seen = partial.get(revision, (count, []))
        if index not in seen:
            seen.append(index)
        partial[revision] = (total, seen)
    while watermark + 1 in partial and len(partial[watermark + 1][1]) >= partial[watermark + 1][0]:
        watermark += 1
        del partial[watermark]
    return watermark


def to_rows(env) -> tuple[list[PairRow], list[CredentialRow]]:
    kind = env.WhichOneof("payload")
    if kind == "access_changed":
        a = env.access_changed
        return [PairRow(a.door_id, a.user_id, env.aggregate_version,
                        a.SerializeToString() if a.rules else b"")], []
    if kind == "credential_changed":
        c = env.credential_changed
        revoked = c.deleted or c.state != ev.CREDENTIAL_STATE_ACTIVE
        return [], [CredentialRow(c.credential_id, c.user_id, c.kind, c.secret_hash, revoked, env.aggregate_version)]
    return [], []


class Projector:
    def __init__(self, view: UnlockView, cache: UnlockCache, bus: BusSettings, backlog: RedisBacklog,
                 *, batch: int = 256, instance: str = "local", lease_seconds: float = 1.0,
                 stall_seconds: float = 10.0, watch_period: float = 1.0) -> None:
        # One durable consumer per instance: each instance applies the whole stream
        # to its view; a consumer idle for a day (a pod that is gone) is removed.
        self.durable = DURABLE_PREFIX + "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)
        self.view = view
        self.cache = cache
        self.bus = bus
        self.batch = batch
        self.watermark = 0
        # Progress is published by setting the Event of the current advance and putting a fresh
        # one in its place: waiters hold no lock the pipeline needs, so however a waiter is
        # cancelled (twice, by gRPC, inside Python 3.11's wait_for clean-up) the pipeline
        # cannot be left waiting for it. A shared Condition did exactly that.
        self._advanced = asyncio.Event()
        self.stall_seconds = stall_seconds
        self.watch_period = watch_period
        self.stalled = False
        self.heartbeat = time.monotonic()
        self.backlog = backlog
        self.lease_seconds = lease_seconds
        # Held from a round's Redis write to its view write, and while the lease loop writes
        # the backlog and takes the lease: the two never interleave.
        self._redis_lock = asyncio.Lock()
        # True once the backlog is empty: Redis has every key the view has.
        self._redis_complete = False
        self._lease_until = 0.0  # monotonic; the lease has surely expired in Redis after this
        self.first_sight: tracing.FirstSight | None = None
        """Set (by the Unlock service) in a process with no local cache: with tracing on, each
        changed pair's event trace waits here for the first Unlock answered from it."""

    # ---- progress, for Unlock ------------------------------------------------------------
    async def reached(self, revision: int) -> None:
        """Return once the watermark is at least `revision`; the caller bounds the wait
        (`async with asyncio.timeout(...)` in its own task)."""
        while self.watermark < revision:
            await self._advanced.wait()

    def _publish(self, watermark: int) -> None:
        self.watermark = watermark
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    def healthy(self) -> bool:
        """False while the watchdog sees the projector stalled: the view is falling behind."""
        return not self.stalled

    # ---- the pipeline and its watchdog --------------------------------------------------
    async def run(self) -> None:
        """The pipeline in a task of its own, and a watchdog that restarts it when it stalls.

        Stalled: the broker has messages for this consumer (pending, or delivered and not
        acknowledged) and neither its delivered nor its acknowledged sequence has moved for
        `stall_seconds`. The stuck task's stack is logged, health turns NOT_SERVING
        (`healthy`), and the pipeline is cancelled and started again: the new one re-creates
        the consumer at the view's position, so nothing waits for the ack timeout.
        """
        broker = BrokerProgress(self.bus, PERMISSIONS_STREAM, self.durable)
        try:
            while True:
                pipeline = asyncio.create_task(retry_forever("projector", self._consume, log),
                                               name="access-projector-pipeline")
                try:
                    await self._watch(pipeline, broker)
                finally:
                    await end_task(pipeline, log)
        finally:
            self._set_stalled(False)
            await broker.close()

    async def _watch(self, pipeline: asyncio.Task, broker: BrokerProgress) -> None:
        """Return when `pipeline` has stalled or ended (it never ends on its own)."""
        clock = StallClock(self.stall_seconds)
        while True:
            await asyncio.wait({pipeline}, timeout=self.watch_period)
            bus.raise_if_cancelled()
            if pipeline.done():
                error = None if pipeline.cancelled() else pipeline.exception()
                log.error("the projector pipeline ended unexpectedly; restarting it",
                          extra={"error": repr(error) if error else "cancelled"})
                RESTARTS.labels("ended").inc()
                return
            info = await broker.consumer_info(limit=max(self.watch_period, 0.5))
            stuck_for = clock.observe(info, time.monotonic())
            if stuck_for is None:
                self._set_stalled(False)
                continue
            self._set_stalled(True)
            log.error("projector stalled: the stream has work for it and its consumer has not moved; "
                      "restarting it", extra={"seconds": round(stuck_for, 1), "num_pending": info.num_pending,
                                              "num_ack_pending": info.num_ack_pending,
                                              "heartbeat_age": round(time.monotonic() - self.heartbeat, 1),
                                              "stack": stack_of(pipeline)})
            RESTARTS.labels("stalled").inc()
            return

    def _set_stalled(self, stalled: bool) -> None:
        if stalled != self.stalled:
            self.stalled = stalled
            STALLED.set(1 if stalled else 0)
            if not stalled:
                log.info("the projector makes progress again")

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()
        HEARTBEAT.set_to_current_time()

    async def _consume(self, backoff: Backoff) -> None:
        async with bus.session(self.bus, name="access-projector") as (_, js):
            watermark, partial = await self.view.progress()
            if watermark != self.watermark:
                self._publish(watermark)
            # At the view's own position, so the revision is never kept behind a dead process's hole.
            start = await start_sequence(js, watermark)
            sub = await bus.fresh_pull_consumer(js, PERMISSIONS_STREAM, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, ack_wait=30,
                max_ack_pending=10_000, inactive_threshold=IDLE_CONSUMER_SECONDS))
            log.info("projector consuming", extra={"watermark": watermark, "start_seq": start})
            await bus.consume(Puller(sub, self.batch, FETCH_WAIT_SECONDS),
                              lambda msgs: self.apply(msgs, partial), backoff, beat=self._beat)

    async def apply(self, msgs, partial: dict) -> None:
        # One consumer span for the round (a child of the one message's trace, linked to each
        # of several); off, a boolean test.
        with bus.consumer_batch_span("access.project", msgs):
            await self._apply(msgs, partial)

    async def _apply(self, msgs, partial: dict) -> None:
        batch = ViewBatch(partial=partial)
        watermark = self.watermark
        sight = self.first_sight if tracing.ENABLED else None
        for msg in msgs:
            try:
                env = envelope.parse(msg.data)
            except ValueError:
                # Only the relay publishes here; a bad message is logged, not fatal.
                log.error("undecodable event on the permissions stream",
                          extra={"stream_seq": msg.metadata.sequence.stream})
                continue
            pairs, creds = to_rows(env)
            batch.pairs += pairs
            batch.credentials += creds
            watermark = advance(watermark, partial, env.revision, env.revision_event_index,
                                env.revision_event_count)
            if sight is not None and pairs:
                # The message's own trace (the batch span may be a root with links).
                context = bus.extract_context(msg.headers)
                for row in pairs:
                    sight.remember((row.door_id, row.user_id), env.revision, context)
        batch.watermark = watermark
        await self.store(batch)
        for msg in msgs:
            await msg.ack()
        if watermark != self.watermark:
            self._publish(watermark)

    async def store(self, batch: ViewBatch) -> None:
        """Redis, then the view (which records the watermark): under the lease, an answer from
        Redis is never older than the watermark a worker reads from the view."""
        async with self._redis_lock:
            if self._redis_complete:
                try:
                    await self.cache.write(batch.pairs, batch.credentials)
                except Exception as exc:  # any failure: Redis is a cache, the view goes on
                    log.warning("redis write-through failed; Redis is not trusted until it has caught up",
                                extra={"error": repr(exc)})
                    self._redis_complete = False
                    REDIS_TRUSTED.set(0)
                    # Workers may read Redis until the lease expires: the view must not
                    # move past what Redis has before then.
                    await asyncio.sleep(max(self._lease_until - time.monotonic(), 0))
            if not self._redis_complete:
                await self.backlog.add([(p.door_id, p.user_id) for p in batch.pairs],
                                       [(c.kind, c.secret_hash) for c in batch.credentials])
            await self.view.apply(batch)

    async def run_redis_lease(self) -> None:
        """Keep the lease while Redis has everything; after an outage, write the backlog first."""
        failing = False
        while True:
            bus.raise_if_cancelled()
            try:
                await self.keep_redis_current()
                if failing:
                    log.info("redis is current again; workers trust it")
                failing = False
            except Exception as exc:  # any failure: workers read the view meanwhile
                if not failing:
                    log.warning("cannot renew the redis lease; workers read the view", extra={"error": repr(exc)})
                failing = True
            await asyncio.sleep(self.lease_seconds / 4)  # the renewal period, not a synchronisation

    async def keep_redis_current(self) -> None:
        """One renewal. After an outage, first the backlog, a chunk per turn of the lock so that
        the projector is not held up by a long one, then the lease."""
        while True:
            async with self._redis_lock:
                if not self._redis_complete:
                    # Under the lock a chunk is read from the view, written and removed with no
                    # round in between, so a key changed again is either in the view read or
                    # added to the backlog after the removal.
                    self._redis_complete = await self._write_backlog_chunk()
                    if not self._redis_complete:
                        continue
                try:
                    await self.cache.hold_lease(self.lease_seconds)
                finally:
                    # Redis counts the lease from when it ran the SET (even one that timed out
                    # here), which is before this moment; 5% for the two clocks' rates.
                    self._lease_until = time.monotonic() + self.lease_seconds * 1.05 + 0.01
                REDIS_TRUSTED.set(1)
                return

    async def _write_backlog_chunk(self) -> bool:
        """The view's current rows for a chunk of the keys Redis missed; True once none are left."""
        REDIS_BACKLOG.set(await self.backlog.count())
        pairs, creds = await self.backlog.take(REPLAY_CHUNK)
        if not pairs and not creds:
            return True
        pair_rows = await asyncio.gather(*(self.view.get_pair(d, u) for d, u in pairs))
        cred_rows = await asyncio.gather(*(self.view.get_credential(k, h) for k, h in creds))
        # A key the view has no row for (e.g. a view rebuilt since) is removed from Redis.
        await self.cache.forget([key for key, row in zip(pairs, pair_rows, strict=True) if row is None],
                                [key for key, row in zip(creds, cred_rows, strict=True) if row is None])
        await self.cache.write([row for row in pair_rows if row is not None],
                               [row for row in cred_rows if row is not None])
        await self.backlog.remove(pairs, creds)
        return False


async def start_sequence(js, watermark: int) -> int:
    """The stream sequence of the first event above `watermark` (the stream's end + 1 if none).

    The relay publishes in (revision, index) order, so revisions never go down along the
    stream and a binary search finds it in a few reads. The answer is checked (it must be
    the first event, index 0, of revision watermark + 1); anything unexpected (purged or
    undecodable messages, an event published twice long apart) falls back to the stream's
    first message: slower, but nothing is skipped.
    """
    info = await js.stream_info(PERMISSIONS_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    if not last or not watermark:
        return first or 1
    subjects = PERMISSIONS_SUBJECT_PREFIX + ">"

    async def at_or_after(seq: int):
        msg = await js.get_msg(PERMISSIONS_STREAM, seq, subject=subjects, next=True)
        return msg.seq, envelope.parse(msg.data)

    try:
        low, high = first, last + 1
        while low < high:
            middle = (low + high) // 2
            try:
                seq, env = await at_or_after(middle)
            except NotFoundError:
                high = middle  # nothing from here on
                continue
            if env.revision > watermark:
                high = middle
            else:
                low = seq + 1
        if low > last:
            return low
        seq, env = await at_or_after(low)
        if env.revision == watermark + 1 and env.revision_event_index == 0:
            return seq
        log.warning("no clean start for the projector's consumer; replaying the stream",
                    extra={"watermark": watermark, "found_revision": env.revision})
    except (NotFoundError, ValueError) as exc:
        log.warning("could not find the projector's start; replaying the stream", extra={"error": repr(exc)})
    return first
