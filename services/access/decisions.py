"""Unlock decisions leave the response path and reach JetStream, in order, without loss.

`record` only appends to an in-memory queue (microseconds); Unlock's
`record_deferred` does not even encode its event, the publisher (or the
spiller) does, many at a time, off the response path. The publisher
sends queued events to the DECISIONS stream in pipelined batches: what is
waiting goes out together, up to `per_message` events in one JetStream
message (an `EnvelopeBatch`; a lone event goes as a plain Envelope), so the
broker stores and acknowledges one message for many decisions. A decision
waits at most `linger` (20 ms by default) for company before it is sent: fewer, fuller
messages cost the access process and the broker less per decision. `Nats-Msg-Id`
is the event id (a batch: its first event id and size), so an identical
re-send is dropped by JetStream; a re-send cut differently is dropped by the
audit store, which is idempotent by event id. Events that
cannot be published promptly (NATS down or slow: older than `spill_after`)
are moved, in order, to the durable spool, and the spool is drained first
once NATS answers again, each row deleted only after its PubAck.

What a crash of an access process can lose: events still in memory, that is
the batch being gathered (at most the last `linger` of decisions) or
published, plus whatever was decided in the last `spill_after` (default
100 ms) while NATS did not acknowledge. Nothing
acknowledged by JetStream and nothing in the spool is lost. A graceful
shutdown loses nothing: what is waiting is sent (for up to 2 s), and what
could not be sent goes to the spool.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable

from prometheus_client import Gauge

from latchkit import bus, envelope
from latchkit.bus import BusSettings, connect, ensure_streams
from services.access.adapters.sqlite_spool import SqliteDecisionSpool

log = logging.getLogger("latchkey.access.decisions")
Row = tuple[str, str, "bytes | tuple[Callable[..., bytes], tuple]"]
"""(event id, subject, envelope bytes or a deferred encoding: (encode, args))."""
SPOOL_BACKLOG = Gauge("latchkey_access_decision_spool_backlog", "Decision events in the durable spool")


class DecisionPublisher:
    def __init__(self, spool: SqliteDecisionSpool, bus: BusSettings, *, spill_after: float = 0.1,
                 batch: int = 512, per_message: int = 256, linger: float = 0.02) -> None:
        self.spool = spool
        self.bus = bus
        self.spill_after = spill_after
        self.batch = batch
        self.per_message = per_message
        self.linger = linger
        self._pending: collections.deque[tuple[float, Row]] = collections.deque()
        self._wake = asyncio.Event()
        # Held while a batch is in flight and while spilling: keeps the spool in decision order.
        self._order = asyncio.Lock()
        self._spooled = 0

    def record(self, env) -> None:
        """Called on the response path: no I/O."""
        self.record_serialized(env.event_id, envelope.subject(env), env.SerializeToString())

    def record_serialized(self, event_id: str, subject: str, payload: bytes) -> None:
        self._pending.append((time.monotonic(), (event_id, subject, payload)))
        if not self._wake.is_set():
            self._wake.set()

    def record_deferred(self, event_id: str, subject: str, encode: Callable[..., bytes], args: tuple) -> None:
        """An event whose envelope is `encode(*args)`, encoded later with others (Unlock's path).

        `encode` must be pure: the event's bytes are fixed by `args` at this moment.
        """
        self._pending.append((time.monotonic(), (event_id, subject, (encode, args))))
        if not self._wake.is_set():
            self._wake.set()

    async def spill(self, everything: bool = False) -> None:
        """Move events waiting longer than `spill_after` (or all) to the durable spool, oldest first."""
        async with self._order:
            # Under `_order` nothing else takes from the front: the events leave memory only
            # once the spool holds them, so a failed write keeps them for the next attempt.
            cutoff = time.monotonic() - self.spill_after
            count = 0
            for t, _ in self._pending:
                if not everything and t > cutoff:
                    break
                count += 1
            if count:
                await self.spool.append([_encoded(row) for _, row in itertools.islice(self._pending, count)])
                for _ in range(count):
                    self._pending.popleft()
                self._spooled += count
                SPOOL_BACKLOG.set(self._spooled)

    async def run_spiller(self) -> None:
        while True:
            await asyncio.sleep(self.spill_after / 2)  # the spill period, not a synchronisation
            try:
                await self.spill()
            except Exception as exc:  # noqa: BLE001 - keep the events in memory and retry
                log.error("decision spool write failed", extra={"error": repr(exc)})

    async def run_publisher(self) -> None:
        self._spooled = await self.spool.count()
        backoff = 0.1
        while True:
            try:
                bus.raise_if_cancelled()
                await self._publish_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS outages are waited out
                log.warning("decision publisher failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish_forever(self) -> None:
        nc = await connect(self.bus, name="access-decisions", allow_reconnect=False)
        try:
            js = nc.jetstream()
            await ensure_streams(js, self.bus)
            while True:
                bus.raise_if_cancelled()
                if self._spooled:
                    await self.drain_spool(js)
                    continue
                if not self._pending:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                    except TimeoutError:
                        continue
                if len(self._pending) < self.per_message:
                    # Let a few more decisions join this message (a bounded delay, off the response path).
                    await asyncio.sleep(self.linger)
                await self.publish_pending(js)
        finally:
            await bus.close(nc)

    def _messages(self, rows):
        """Consecutive rows -> (subject, payload, Nats-Msg-Id, events) messages, in order.

        One event goes alone on its door's subject; several go together as one
        `EnvelopeBatch` (one stored message, one fsync, one PubAck for all).
        """
        for start in range(0, len(rows), self.per_message):
            chunk = rows[start:start + self.per_message]
            if len(chunk) == 1:
                event_id, subject, payload = chunk[0]
                yield subject, payload, event_id, 1
            else:
                yield (envelope.BATCH_SUBJECT, envelope.pack([payload for _, _, payload in chunk]),
                       f"{chunk[0][0]}+{len(chunk)}", len(chunk))

    async def _publish(self, js, rows) -> tuple[int, Exception | None]:
        """Pipelined publish; returns how many of `rows` (a prefix) were acknowledged."""
        futures = []
        try:
            for subject, payload, msg_id, events in self._messages(rows):
                futures.append((await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}), events))
        except Exception as exc:  # noqa: BLE001 - connection gone: nothing after this was sent
            for future, _ in futures:
                future.cancel()
            return 0, exc
        acked = 0
        for i, (future, events) in enumerate(futures):
            try:
                await asyncio.wait_for(future, timeout=5)
                acked += events
            except Exception as exc:  # noqa: BLE001 - keep order: stop at the first failure
                for rest, _ in futures[i:]:
                    rest.cancel()
                return acked, exc
        return acked, None

    async def publish_pending(self, js) -> None:
        async with self._order:
            if self._spooled:
                # Older events went to the spool meanwhile (e.g. during the linger): they go first.
                return
            count = min(self.batch, len(self._pending))
            batch = [(t, _encoded(row)) for t, row in itertools.islice(self._pending, count)]
            for _ in range(count):
                self._pending.popleft()
            acked, error = 0, None
            try:
                acked, error = await self._publish(js, [row for _, row in batch])
            finally:
                # Unacknowledged events go back to the front, in order, for the spiller or a
                # retry; also when this task is cancelled mid-publish (shutdown).
                self._pending.extendleft(reversed(batch[acked:]))
        if error is not None:
            raise error

    async def drain_spool(self, js) -> None:
        rows = await self.spool.oldest(self.batch)
        if not rows:
            async with self._order:  # not while a spill is adding rows
                self._spooled = await self.spool.count()
            return
        acked, error = await self._publish(js, [(e, s, p) for _, e, s, p in rows])
        if acked:
            await self.spool.delete_through(rows[acked - 1][0])
            self._spooled = max(self._spooled - acked, 0)
            SPOOL_BACKLOG.set(self._spooled)
        if error is not None:
            raise error

    async def close(self, flush_seconds: float = 2.0) -> None:
        """On graceful shutdown: send what is waiting (for at most `flush_seconds`), spool the rest.

        Sending first matters most when no process will start on this spool again (a pod
        removed by a scale-down).
        """
        if self._pending and not self._spooled:
            try:
                await asyncio.wait_for(self._flush(), timeout=flush_seconds)
            except Exception as exc:  # noqa: BLE001 - NATS away: the spool keeps them
                log.warning("could not send the last decisions; spooling them", extra={"error": repr(exc)})
        await self.spill(everything=True)
        await self.spool.close()

    async def _flush(self) -> None:
        nc = await connect(self.bus, name="access-decisions-flush", allow_reconnect=False)
        try:
            js = nc.jetstream()
            while self._pending and not self._spooled:
                await self.publish_pending(js)
        finally:
            await bus.close(nc)


def _encoded(row: Row) -> tuple[str, str, bytes]:
    event_id, subject, payload = row
    if type(payload) is bytes:
        return row
    encode, args = payload
    return event_id, subject, encode(*args)
