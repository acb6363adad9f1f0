"""Audit: ingest throughput with the consumer's lag, publish-to-visible lag, AuditLog streaming rate.

The streaming case reads a stored range of LATCHKEY_BENCH_AUDIT_EVENTS events
(default 1,000,000), written straight into the embedded store before the
service starts (set-up, not measured).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import nats
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev

from bench.harness import aio_channel, percentile, start_module, start_services, tls
from devstack.stack import free_port
from latchkit import envelope
from latchkit.bus import DECISIONS_STREAM, BusSettings, ensure_streams
from services.audit.adapters.sqlite_store import SqliteAuditStore
from services.audit.records import to_record

AUDIT_ITEM_BYTES = 520  # a serialized AuditLogResponse for an unlock decision, about
STORED = int(os.environ.get("LATCHKEY_BENCH_AUDIT_EVENTS", "1000000"))
INGEST = 20_000
LAG_RATE, LAG_SECONDS = 500, 5


def decision(door: str) -> ev.Envelope:
    return envelope.build(ev.UnlockDecided(decision_id=str(uuid.uuid4()), door_id=door, user_id=str(uuid.uuid4()),
                                           decision=1, reason=1, view_revision=42),
                          actor=f"spiffe://latchkey/door/{door}", aggregate_key=f"door/{door}")


async def prefill(path: Path, count: int) -> float:
    store = SqliteAuditStore(path)
    await store.open()
    t0 = time.perf_counter()
    door = "bulk-" + uuid.uuid4().hex[:8]
    for start in range(0, count, 20_000):
        batch = []
        for _ in range(min(20_000, count - start)):
            env = decision(door)
            batch.append(to_record(env, env.SerializeToString()))
        await store.append(batch)
    await store.close()
    return time.perf_counter() - t0


async def run(stack_urls, pki_dir: Path, state_dir: Path) -> dict:
    rows: dict = {}
    prefill_s = await prefill(state_dir / "audit" / "audit.sqlite", STORED)
    rows["prefill_store_directly"] = {"calls": STORED, "rps": STORED / prefill_s}
    services = start_services(stack_urls, pki_dir, state_dir, names=("audit",))
    nc = await nats.connect(stack_urls.nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings(url=stack_urls.nats_url, duplicate_window_s=600))
        async with aio_channel(services.targets["audit"], tls(pki_dir, "auditor")) as ch:
            stub = audit_pb2_grpc.AuditServiceStub(ch)
            rows["auditlog_stream_one_client"] = await stream_rate(stub)
            rows["stream_floor_one_client"] = await stream_floor(services.env, pki_dir,
                                                                 rows["auditlog_stream_one_client"])
            rows["auditlog_stream_one_client"]["rps_x_floor"] = (rows["auditlog_stream_one_client"]["rps"]
                                                                  / rows["stream_floor_one_client"]["rps"])
            rows["auditlog_stream_one_client_max_batch_256"] = await stream_rate(stub, batch=256)
            # A closed range (end_time now): the same events in occurrence order, by the time index.
            rows["auditlog_closed_range_occurrence_order"] = await stream_rate(stub, closed=True)
            rows["auditlog_closed_range_occurrence_order_max_batch_256"] = await stream_rate(stub, batch=256,
                                                                                          closed=True)
            floor = rows["stream_floor_one_client"]["rps"]
            for name in ("auditlog_stream_one_client_max_batch_256", "auditlog_closed_range_occurrence_order",
                         "auditlog_closed_range_occurrence_order_max_batch_256"):
                rows[name]["rps_x_floor"] = rows[name]["rps"] / floor
            rows["ingest"] = await ingest(js, stub)
            rows["publish_to_visible_lag"] = await visible_lag(js, stub)
    finally:
        await nc.close()
        services.stop()
    return rows


async def stream_rate(stub, batch: int = 0, closed: bool = False) -> dict:
    """Events received (and parsed) per second by one client reading the whole stored range.

    `closed`: up to an end_time of now, so in occurrence order rather than storage order.
    """
    t0 = time.perf_counter()
    count = 0
    request = audit_pb2.AuditLogRequest(event_types=["access.unlock_decided"], max_batch=batch)
    if closed:
        request.end_time.FromNanoseconds(time.time_ns())
    async for item in stub.AuditLog(request, timeout=3600):
        count += len(item.events) if batch > 1 else 1
    elapsed = time.perf_counter() - t0
    return {"calls": count, "rps": count / elapsed, "seconds": elapsed}


async def stream_floor(env: dict, pki_dir: Path, measured: dict) -> dict:
    """A bare server stream of messages the size of an AuditLog item, on the same runner and TLS."""
    port = free_port()
    echo = start_module("bench.echo_server", env, port)
    try:
        count = max(100_000, min(measured["calls"], 1_000_000))
        async with aio_channel(f"localhost:{port}", tls(pki_dir, "auditor")) as ch:
            call = ch.unary_stream("/latchkey.bench.Echo/Stream")
            t0 = time.perf_counter()
            received = 0
            async for _ in call(f"{count}:{AUDIT_ITEM_BYTES}".encode(), timeout=3600):
                received += 1
            elapsed = time.perf_counter() - t0
    finally:
        echo.terminate()
    return {"calls": received, "rps": received / elapsed, "seconds": elapsed}


async def ingest(js, stub) -> dict:
    door = "ingest-" + uuid.uuid4().hex[:8]
    envs = [decision(door) for _ in range(INGEST)]
    max_pending = 0
    t0 = time.perf_counter()
    for start in range(0, INGEST, 1000):
        futures = [await js.publish_async(envelope.subject(e), e.SerializeToString(),
                                          headers={"Nats-Msg-Id": e.event_id}) for e in envs[start:start + 1000]]
        await asyncio.gather(*futures)
        info = await js.consumer_info(DECISIONS_STREAM, "audit-decisions")
        max_pending = max(max_pending, info.num_pending + info.num_ack_pending)
    published = time.perf_counter() - t0
    seen = 0
    request = audit_pb2.AuditLogRequest(door_id=door, follow=True)
    async for _ in stub.AuditLog(request, timeout=600):
        seen += 1
        if seen == INGEST:
            break
    stored = time.perf_counter() - t0
    return {"calls": INGEST, "rps": INGEST / stored, "publish_rps": INGEST / published,
            "max_consumer_lag": max_pending}


async def visible_lag(js, stub) -> dict:
    """Publish to an auditor's follow stream, timed only once the stream is live.

    A first event is published and awaited before the timed ones: events sent
    while the follow call was still being set up would time the set-up (it
    showed as a p99 of 0.4-0.7 s), not the ingest.
    """
    door = "lag-" + uuid.uuid4().hex[:8]
    lags: list[float] = []
    total = LAG_RATE * LAG_SECONDS
    live = asyncio.Event()

    async def follow() -> None:
        request = audit_pb2.AuditLogRequest(door_id=door, follow=True)
        async for item in stub.AuditLog(request, timeout=120):
            if not live.is_set():
                live.set()  # the first event: the stream is live, the timed events follow
                continue
            lags.append(time.time() - item.event.source_time.ToNanoseconds() / 1e9)
            if len(lags) == total:
                return

    async def publish() -> None:
        e = decision(door)
        await js.publish_async(envelope.subject(e), e.SerializeToString(), headers={"Nats-Msg-Id": e.event_id})

    reader = asyncio.create_task(follow())
    await publish()
    await asyncio.wait_for(live.wait(), 60)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / LAG_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the publishing schedule (500/s), not a synchronisation
        await publish()
    await asyncio.wait_for(reader, 120)
    return {"p50_ms": percentile(lags, 0.5) * 1e3, "p99_ms": percentile(lags, 0.99) * 1e3, "calls": len(lags),
            "rps": LAG_RATE}
