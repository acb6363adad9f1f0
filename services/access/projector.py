"""The projector: PERMISSIONS stream -> unlock view -> Redis, acked only after both.

A durable pull consumer; one logical projector per deployment (the access
service's first process runs it). Each round fetches a batch, writes Redis
(set-if-newer), then the view (one transaction, versions compared in the
store, with the watermark), then acks. A crash before the ack redelivers the batch; applying it again
changes nothing. Events carry (revision, index, count): the projector records
the highest revision below which every event has been applied (the
watermark), which is what `Unlock` reports and what `min_revision` waits for.

Redis unreachable: the view is the truth, so the round still applies and
acks; the keys Redis missed are remembered and re-written before anything
newer once Redis answers again (and every entry has a TTL as a last bound).
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from latchkit import bus, envelope
from latchkit.bus import PERMISSIONS_STREAM, BusSettings, Puller, connect, ensure_streams
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.ports import CredentialRow, PairRow, UnlockView, ViewBatch

log = logging.getLogger("latchkey.access.projector")
DURABLE_PREFIX = "access-projector-"
IDLE_CONSUMER_SECONDS = 24 * 3600
FETCH_WAIT_SECONDS = 0.02  # busy: bounds how long an event waits in a partial batch


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
        revoked = c.deleted or c.state != 1
        return [], [CredentialRow(c.credential_id, c.user_id, c.kind, c.secret_hash, revoked, env.aggregate_version)]
    return [], []


class Projector:
    def __init__(self, view: UnlockView, cache: RedisUnlockCache, bus: BusSettings, *, batch: int = 256,
                 instance: str = "local") -> None:
        # One durable consumer per instance: each instance applies the whole stream
        # to its view; a consumer idle for a day (a pod that is gone) is removed.
        self.durable = DURABLE_PREFIX + "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)
        self.view = view
        self.cache = cache
        self.bus = bus
        self.batch = batch
        self.watermark = 0
        self.changed = asyncio.Condition()
        self._redis_missed: tuple[list[PairRow], list[CredentialRow]] = ([], [])

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                bus.raise_if_cancelled()
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - outlive broker and store outages
                log.warning("projector failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _consume(self) -> None:
        nc = await connect(self.bus, name="access-projector", allow_reconnect=False)
        try:
            js = nc.jetstream()
            await ensure_streams(js, self.bus)
            config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                    deliver_policy=DeliverPolicy.ALL, ack_wait=30, max_ack_pending=10_000,
                                    inactive_threshold=IDLE_CONSUMER_SECONDS)
            try:
                await js.consumer_info(PERMISSIONS_STREAM, self.durable)
            except NotFoundError:
                await js.add_consumer(PERMISSIONS_STREAM, config)
            sub = await js.pull_subscribe_bind(self.durable, stream=PERMISSIONS_STREAM)
            self.watermark, partial = await self.view.progress()
            await self._notify()
            puller = Puller(sub, self.batch, FETCH_WAIT_SECONDS)
            while True:
                try:
                    msgs = await puller.next()
                except TimeoutError:
                    continue
                await self.apply(msgs, partial)
        finally:
            await bus.close(nc)

    async def apply(self, msgs, partial: dict) -> None:
        batch = ViewBatch(partial=partial)
        watermark = self.watermark
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
        batch.watermark = watermark
        # Redis first, then the view (which records the watermark): an answer from
        # Redis is then never older than the watermark a worker reads from the view.
        await self._write_cache(batch.pairs, batch.credentials)
        await self.view.apply(batch)
        for msg in msgs:
            await msg.ack()
        if watermark != self.watermark:
            self.watermark = watermark
            await self._notify()

    async def _write_cache(self, pairs: list[PairRow], creds: list[CredentialRow]) -> None:
        missed_pairs, missed_creds = self._redis_missed
        try:
            # Earlier misses first, so nothing older lands after something newer.
            await self.cache.write(missed_pairs + pairs, missed_creds + creds)
            self._redis_missed = ([], [])
        except Exception as exc:  # noqa: BLE001 - Redis is a cache; the view already has it
            log.warning("redis write-through failed; will retry", extra={"error": repr(exc)})
            self._redis_missed = (missed_pairs + pairs, missed_creds + creds)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
