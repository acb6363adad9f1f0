"""Ingest: PERMISSIONS and DECISIONS streams -> the audit store, each event once.

A durable pull consumer per stream. Each round: fetch a batch, decode (a
message may carry several events: `envelope.unpack`),
append (the store skips event ids it already has, so a redelivery is a
no-op) together with the stream sequence reached, and ack only after
`append` returned (durable). On every (re)start the consumer is re-created at
the sequence after the one the store recorded: messages a crashed process had
fetched but not stored come first again, so storage order stays stream order
instead of waiting out the ack timeout. An undecodable
message is parked with its raw bytes, reported in the log, and acked, so it
neither vanishes nor blocks the stream. Both consumers append through the
store's single writer, so the hash chain has one order. A failure (broker or
disk) is retried with a wait that goes back to its shortest after every
stored batch: consuming never returns, so it cannot wait for a return.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from latchkit import bus, envelope
from latchkit.bus import (
    DECISIONS_STREAM,
    PERMISSIONS_STREAM,
    BusSettings,
    Puller,
)
from latchkit.retry import Backoff, retry_forever
from services.audit.ports import AuditStore, AuditWriterFenced
from services.audit.records import to_record

log = logging.getLogger("latchkey.audit.ingest")
INGESTED = Counter("latchkey_audit_ingested", "Events stored by the audit ingest", ["stream"])
PARKED = Counter("latchkey_audit_parked", "Undecodable messages parked", ["stream"])
FETCH_WAIT_SECONDS = 0.05
CONSUMERS = {PERMISSIONS_STREAM: "audit-permissions", DECISIONS_STREAM: "audit-decisions"}


class Ingest:
    def __init__(self, store: AuditStore, bus: BusSettings, *, batch: int = 512) -> None:
        self.store = store
        self.bus = bus
        self.batch = batch
        self.appended = asyncio.Condition()

    async def run(self) -> None:
        await asyncio.gather(*(self._run_stream(s) for s in CONSUMERS))

    async def _run_stream(self, stream: str) -> None:
        async def consume(backoff: Backoff) -> None:
            try:
                await self._consume(stream, backoff)
            except AuditWriterFenced:
                # A newer writer owns the store: consuming on would only fail again. Stop
                # (the connection is closed) and leave the stream to it until shutdown.
                log.error("a newer audit writer took the store; this ingest stops consuming",
                          extra={"stream": stream})
                await asyncio.Future()

        await retry_forever(f"ingest of {stream}", consume, log)

    async def _consume(self, stream: str, backoff: Backoff) -> None:
        async with bus.session(self.bus, name=f"audit-{stream.lower()}") as (_, js):
            position = await self.store.position(stream)
            sub = await bus.fresh_pull_consumer(js, stream, ConsumerConfig(
                durable_name=CONSUMERS[stream], ack_policy=AckPolicy.ALL, ack_wait=60, max_ack_pending=20_000,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
                opt_start_seq=position + 1 if position else None))
            await bus.consume(Puller(sub, self.batch, FETCH_WAIT_SECONDS),
                              lambda msgs: self.handle(stream, msgs), backoff)

    async def handle(self, stream: str, msgs) -> None:
        if not msgs:
            return
        # Traced: one span per batch, in the trace of the event that came (linked to each, if several).
        with bus.consumer_batch_span(f"audit.ingest {stream}", msgs):
            await self._store(stream, msgs)

    async def _store(self, stream: str, msgs) -> None:
        records = []
        for msg in msgs:
            try:
                # A message is one envelope or a batch of them (the access service's decisions).
                items = envelope.unpack(msg.subject, msg.data)
                records += [to_record(envelope.parse(raw), raw) for raw in items]
            except ValueError as exc:
                seq = msg.metadata.sequence.stream
                await self.store.park(stream, seq, msg.data, str(exc))
                PARKED.labels(stream).inc()
                log.error("parked an undecodable message", extra={"stream": stream, "stream_seq": seq})
        last = msgs[-1].metadata.sequence.stream
        added = await self.store.append(records, stream, last)
        # AckPolicy.ALL: acknowledging the last message acknowledges the batch.
        await msgs[-1].ack()
        INGESTED.labels(stream).inc(added)
        if added:
            async with self.appended:
                self.appended.notify_all()
