"""Unlock decisions leave the response path and reach JetStream, in order, without loss.

`record` only appends to an in-memory list (microseconds). A writer task
moves that list to the durable spool every few milliseconds (one fsync per
batch); a publisher task sends spooled rows to the DECISIONS stream,
pipelined, deleting each only after its PubAck (`Nats-Msg-Id` = event id, so
a re-send after a crash is dropped by JetStream).

What a crash of an access process can lose: decisions still in memory, that
is those answered in the last flush interval (default 5 ms) before the
crash. Nothing that reached the spool is lost; nothing acknowledged by
JetStream is lost.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from latchkit import envelope
from latchkit.bus import BusSettings, connect, ensure_streams
from services.access.adapters.sqlite_spool import SqliteDecisionSpool

log = logging.getLogger("latchkey.access.decisions")
SPOOL_BACKLOG = Gauge("latchkey_access_decision_spool_backlog", "Decision events spooled, not yet acked")


class DecisionPublisher:
    def __init__(self, spool: SqliteDecisionSpool, bus: BusSettings, *, flush_seconds: float = 0.005,
                 batch: int = 512) -> None:
        self.spool = spool
        self.bus = bus
        self.flush_seconds = flush_seconds
        self.batch = batch
        self._pending: list[tuple[str, str, bytes]] = []
        self._spooled = asyncio.Event()

    def record(self, env) -> None:
        """Called on the response path: no I/O."""
        self._pending.append((env.event_id, envelope.subject(env), env.SerializeToString()))

    async def flush(self) -> None:
        if self._pending:
            rows, self._pending = self._pending, []
            try:
                await self.spool.append(rows)
            except BaseException:
                self._pending[:0] = rows
                raise
            self._spooled.set()

    async def run_writer(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)  # the batching interval, not a synchronisation
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - keep the rows in memory and retry
                log.error("decision spool write failed", extra={"error": repr(exc)})

    async def run_publisher(self) -> None:
        backoff = 0.1
        while True:
            try:
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
                self._spooled.clear()
                sent = await self.publish_round(js)
                if sent < self.batch:
                    try:
                        await asyncio.wait_for(self._spooled.wait(), timeout=0.5)
                    except TimeoutError:
                        pass
        finally:
            await nc.close()

    async def publish_round(self, js) -> int:
        rows = await self.spool.oldest(self.batch)
        SPOOL_BACKLOG.set(len(rows))
        if not rows:
            return 0
        futures = [await js.publish_async(subject, payload, headers={"Nats-Msg-Id": event_id})
                   for _, event_id, subject, payload in rows]
        acked, error = 0, None
        for future in futures:
            try:
                await asyncio.wait_for(future, timeout=5)
                acked += 1
            except Exception as exc:  # noqa: BLE001 - keep order: stop at the first failure
                error = exc
                break
        for future in futures[acked:]:
            future.cancel()
        if acked:
            await self.spool.delete_through(rows[acked - 1][0])
        if error is not None:
            raise error
        return acked

    async def close(self) -> None:
        """On graceful shutdown: whatever is in memory goes to the spool."""
        await self.flush()
        await self.spool.close()
