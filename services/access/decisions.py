"""Unlock decisions leave the response path and reach JetStream, in order, without loss.

`record` only appends to an in-memory queue (no I/O); Unlock's
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

Durability, `LATCHKEY_ACCESS_DECISION_DURABILITY`:

- `acked` (the default): no answer leaves before its decision is durable.
  `record_deferred` returns a future shared by every event recorded since the
  publisher last took a batch; the publisher resolves it once all of them are
  acknowledged by JetStream or written (fsync) to the spool. Unlock awaits it
  (`wait_durable`) before it answers. The cost is paid once per batch, not
  per call: while one batch waits for its PubAck the next one gathers (group
  commit), so the linger does not apply. A crash loses no answered decision;
  it can lose decisions whose caller got no answer.
- `async`: the answer leaves at once. A crash can lose events still in
  memory, that is the batch being gathered (at most the last `linger` of
  decisions) or published, plus whatever was decided in the last
  `spill_after` (default 100 ms) while NATS did not acknowledge.

In both modes nothing acknowledged by JetStream and nothing in the spool is
lost, and a graceful shutdown loses nothing: what is waiting is sent (for up
to 2 s), and what could not be sent goes to the spool.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable

from prometheus_client import Gauge

from latchkit import bus, envelope, tracing
from latchkit.bus import BusSettings
from latchkit.retry import Backoff, retry_forever
from services.access.ports import DecisionSpool

log = logging.getLogger("latchkey.access.decisions")
Row = tuple[str, str, "bytes | tuple[Callable[..., bytes], tuple]"]
"""(event id, subject, envelope bytes or a deferred encoding: (encode, args))."""
SPOOL_BACKLOG = Gauge("latchkey_access_decision_spool_backlog", "Decision events in the durable spool")
DURABILITY_MODES = ("acked", "async")
IDLE_WAIT_SECONDS = 0.5
"""An idle publisher looks again this often (for events the spiller moved to the spool)."""
ACK_WAIT_SECONDS = 1.0
"""How long a batch waits for its PubAck before the connection counts as dead: the events go
back to memory, from where the spiller makes them durable in the spool."""


class DecisionNotDurable(Exception):
    """A decision's event was neither acknowledged nor spooled within the caller's deadline."""


async def wait_durable(group: asyncio.Future | None, deadline: float | None) -> None:
    """Return once `group` (from `record_deferred`; None: nothing to wait for) is durable.

    `deadline` is event loop time. The shared future is shielded: one caller's timeout
    must not cancel it for the others in its batch.
    """
    if group is None or group.done():
        return
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(group)
    except TimeoutError:
        raise DecisionNotDurable("the decision was not durable before the deadline") from None


class DecisionPublisher:
    def __init__(self, spool: DecisionSpool, bus: BusSettings, *, durability: str = "acked",
                 spill_after: float = 0.1, batch: int = 512, per_message: int = 256, linger: float = 0.02) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability {durability!r}: use acked or async")
        self.spool = spool
        self.bus = bus
        self.durability = durability
        self.spill_after = spill_after
        self.batch = batch
        self.per_message = per_message
        # Acked: callers wait for their batch, so holding it back would only add latency;
        # batches form by themselves while the previous one waits for its PubAck.
        self.linger = linger if durability == "async" else 0.0
        # (recorded at, row, group): the group is the future shared with the caller (acked mode).
        self._pending: collections.deque[tuple[float, Row, asyncio.Future | None]] = collections.deque()
        self._group: asyncio.Future | None = None
        self._last_group: asyncio.Future | None = None
        # Set by the idle publisher, resolved by the next record: a plain future wakes it in one
        # step of the event loop (an Event under `wait_for` takes a task and three steps).
        self._wake: asyncio.Future | None = None
        # Held while a batch is in flight and while spilling: keeps the spool in decision order.
        self._order = asyncio.Lock()
        self._spooled = 0
        # With tracing on: event id -> the traceparent of the call that recorded it (its server
        # span), so its publish joins that trace. Off, never touched.
        self._traces: dict[str, str] = {}


    @property
    def traces_kept(self) -> int:
        """Trace contexts held for recorded events not yet published (always 0 with tracing off):
        each is dropped when its event is sent or spooled, so this never outgrows the backlog."""
        return len(self._traces)

    def record(self, env) -> asyncio.Future | None:
        """Called on the response path: no I/O."""
        return self.record_serialized(env.event_id, envelope.subject(env), env.SerializeToString())

    def record_serialized(self, event_id: str, subject: str, payload: bytes) -> asyncio.Future | None:
        return self._append((event_id, subject, payload))

    def record_deferred(self, event_id: str, subject: str, encode: Callable[..., bytes],
                        args: tuple) -> asyncio.Future | None:
        """An event whose envelope is `encode(*args)`, encoded later with others (Unlock's path).

        `encode` must be pure: the event's bytes are fixed by `args` at this moment. Returns
        the future to pass to `wait_durable` (None in async mode).
        """
        return self._append((event_id, subject, (encode, args)))

    def _append(self, row: Row) -> asyncio.Future | None:
        if tracing.ENABLED:
            traceparent = tracing.current_traceparent()
            if traceparent is not None:
                self._traces[row[0]] = traceparent
        group = self._group
        if group is None and self.durability == "acked":
            group = self._group = self._last_group = asyncio.get_running_loop().create_future()
        self._pending.append((time.monotonic(), row, group))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        return group

    def recorded_so_far(self) -> asyncio.Future | None:
        """A future that is done once every event recorded until now is durable (None: already).

        Events become durable in the order they were recorded, so the newest group covers all.
        """
        group = self._last_group
        return None if group is None or group.done() else group

    def _taken(self, count: int) -> list[tuple[float, Row, asyncio.Future | None]]:
        """The oldest `count` events, out of memory. Events recorded from now on form a new group."""
        taken = [self._pending.popleft() for _ in range(count)]
        self._group = None
        return taken

    def _settle(self, durable: list[tuple[float, Row, asyncio.Future | None]]) -> None:
        """`durable` (the oldest events, in order) are acknowledged or spooled: wake their callers.

        A group whose newest events are still in memory stays pending (groups are contiguous,
        so only the one shared with the oldest event left can be).
        """
        waiting = self._pending[0][2] if self._pending else None
        last = None
        for _, _, group in durable:
            if group is not last:
                last = group
                if group is not None and group is not waiting and not group.done():
                    group.set_result(None)

    async def spill(self, everything: bool = False) -> None:
        """Move events waiting longer than `spill_after` (or all) to the durable spool, oldest first."""
        async with self._order:
            # Under `_order` nothing else takes from the front: the events leave memory only
            # once the spool holds them, so a failed write keeps them for the next attempt.
            cutoff = time.monotonic() - self.spill_after
            count = 0
            for t, _, _ in self._pending:
                if not everything and t > cutoff:
                    break
                count += 1
            if count:
                await self.spool.append([_encoded(row) for _, row, _ in itertools.islice(self._pending, count)])
                if self._traces:
                    # The spool keeps no trace: those events are published, later, untraced.
                    for _, row, _ in itertools.islice(self._pending, count):
                        self._traces.pop(row[0], None)
                self._settle(self._taken(count))
                self._spooled += count
                SPOOL_BACKLOG.set(self._spooled)

    async def run_spiller(self) -> None:
        while True:
            await asyncio.sleep(self.spill_after / 2)  # the spill period, not a synchronisation
            try:
                await self.spill()
            except Exception as exc:  # whatever failed: keep the events in memory and retry
                log.error("decision spool write failed", extra={"error": repr(exc)})

    async def run_publisher(self) -> None:
        self._spooled = await self.spool.count()
        await retry_forever("decision publisher", self._publish_forever, log)

    async def _publish_forever(self, backoff: Backoff) -> None:
        async with bus.session(self.bus, name="access-decisions") as (_, js):
            while True:
                bus.raise_if_cancelled()
                if self._spooled:
                    await self.drain_spool(js)
                    backoff.reset()  # a round went through: the next outage starts from the shortest wait
                    continue
                if not self._pending:
                    self._wake = asyncio.get_running_loop().create_future()
                    try:
                        async with asyncio.timeout(IDLE_WAIT_SECONDS):
                            await self._wake
                    except TimeoutError:
                        continue
                if self.linger and len(self._pending) < self.per_message:
                    # Let a few more decisions join this message (a bounded delay, off the response path).
                    await asyncio.sleep(self.linger)
                await self.publish_pending(js)
                backoff.reset()

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
        futures: list[tuple[asyncio.Future, int]] = []
        try:
            if tracing.ENABLED:
                await self._publish_traced(js, rows, futures)
            else:
                for subject, payload, msg_id, events in self._messages(rows):
                    futures.append((await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}),
                                    events))
        except Exception as exc:  # the connection is gone: nothing after this was sent
            for future, _ in futures:
                future.cancel()
            return 0, exc
        return await bus.acked_in_order(futures, ACK_WAIT_SECONDS)

    async def _publish_traced(self, js, rows, futures: list) -> None:
        """`_publish`'s sends with tracing on: each message in a producer span, a child of its
        one event's Unlock trace, or linked to every Unlock trace of a batch. The span covers
        the send; the ack is awaited after it with the rest of the round."""
        start = 0
        for subject, payload, msg_id, events in self._messages(rows):
            chunk = rows[start:start + events]
            start += events
            parents = [tp for tp in (self._traces.pop(event_id, None) for event_id, _, _ in chunk) if tp]
            if events == 1:
                span = bus.publish_span(subject, {"Nats-Msg-Id": msg_id},
                                        traceparent=parents[0] if parents else None)
            else:
                links = tuple(link for link in (tracing.link_to(tracing.extract({"traceparent": tp}))
                                                for tp in parents) if link is not None)
                span = bus.publish_span(subject, {"Nats-Msg-Id": msg_id}, links=links)
            with span as headers:
                futures.append((await js.publish_async(subject, payload, headers=headers), events))

    async def publish_pending(self, js) -> None:
        async with self._order:
            if self._spooled:
                # Older events went to the spool meanwhile (e.g. during the linger): they go first.
                return
            batch = self._taken(min(self.batch, len(self._pending)))
            rows = [_encoded(row) for _, row, _ in batch]
            acked, error = 0, None
            try:
                acked, error = await self._publish(js, rows)
            finally:
                # Unacknowledged events go back to the front, in order (encoded now), for the
                # spiller or a retry; also when this task is cancelled mid-publish (shutdown).
                self._pending.extendleft((t, rows[i], group) for i, (t, _, group)
                                         in reversed(list(enumerate(batch))[acked:]))
                self._settle(batch[:acked])
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
            except Exception as exc:  # NATS away (or anything else): the spool keeps them
                log.warning("could not send the last decisions; spooling them", extra={"error": repr(exc)})
        await self.spill(everything=True)
        await self.spool.close()

    async def _flush(self) -> None:
        # The streams exist (the publisher ensured them); a flush at shutdown only sends.
        nc = await bus.connect(self.bus, name="access-decisions-flush", allow_reconnect=False)
        try:
            js = nc.jetstream()
            while self._pending and not self._spooled:
                await self.publish_pending(js)
        finally:
            await bus.close(nc)


def _encoded(row: Row) -> tuple[str, str, bytes]:
    event_id, subject, payload = row
    if isinstance(payload, bytes):
        return event_id, subject, payload
    encode, args = payload
    return event_id, subject, encode(*args)
