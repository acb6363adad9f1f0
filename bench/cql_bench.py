"""CQL: the unlock view and the audit store on the CQL engine, beside the embedded ones, in one run.

The engine is the stack's Apache Cassandra 5.0 (same CQL, protocol and driver
as ScyllaDB; one node on this machine's shared cores, so read the figures as
what the adapters cost here, not what a ScyllaDB cluster would give). Each
case runs once per backend with the same load, so every CQL row has its
embedded twin and the echo floor of the same run:

- `view_hit_after_flush@N`: Unlock answered from the view (the per-process
  cache off, Redis flushed before each pass), N calls in flight;
- `view_catch_up_after_seed`: after the seeding writes (3 per user) are
  acknowledged, how long until Unlock shows their last revision;
- `view_apply`: pairs per second written by the view adapter in the
  projector's batches (256 pairs a batch, as the projector writes them);
- `audit_ingest`: decisions per second from JetStream into the store, seen
  by a following auditor (it must keep up with the top Unlock rate);
- `auditlog_stream` / `auditlog_stream_max_batch_256`: events per second
  streamed from the store to one auditor;
- `publish_to_visible_lag`: a decision published to JetStream until an
  auditor's follow stream shows it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import nats
import psycopg
import redis.asyncio as aioredis
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.audit.v1 import audit_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2_grpc

from bench.access_bench import door_tls, seed
from bench.audit_bench import decision, ingest, stream_rate, visible_lag
from bench.harness import aio_channel, closed_loop, start_module, start_services, summary_ms, tls
from devstack.stack import Stack, free_port
from latchkit.bus import purge_streams
from latchkit.scylla import ScyllaSettings
from services.access.ports import PairRow, ViewBatch
from services.audit.records import to_record

BACKENDS = ("embedded", "cql")
IN_FLIGHT = (1, 8)
VIEW_KEYS = 300
APPLY_BATCHES, APPLY_PAIRS = 40, 256
STORED = int(os.environ.get("LATCHKEY_BENCH_CQL_AUDIT_EVENTS", "20000"))


def backend_env(backend: str, stack: Stack) -> dict[str, str]:
    if backend == "embedded":
        return {}
    return {**stack.scylla_env(), "LATCHKEY_SCYLLA_KEYSPACE": f"lk_bench_{uuid.uuid4().hex[:8]}",
            "LATCHKEY_SCYLLA_REPLICATION_FACTOR": "1"}


async def run(stack_urls, pki_dir: Path, state_dir: Path, stack: Stack) -> dict:
    rows: dict = {}
    rows["echo_floor@1"] = await echo_floor(stack_urls, pki_dir, state_dir)
    for backend in BACKENDS:
        # Each leg starts from revision 1 on empty streams: a new view needs every revision from the first.
        await purge_streams(stack_urls.nats_url)
        env = {**backend_env(backend, stack), "LATCHKEY_POSTGRES_DSN": fresh_database(stack_urls.postgres_dsn)}
        rows.update(await view_rows(backend, stack_urls, pki_dir, state_dir / f"view-{backend}", env))
        rows[f"view_apply:{backend}"] = await view_apply(backend, state_dir / f"apply-{backend}", env)
        rows.update(await audit_rows(backend, stack_urls, pki_dir, state_dir / f"audit-{backend}", env))
    floor = rows["echo_floor@1"]["p50_ms"]
    for name, row in rows.items():
        if "p50_ms" in row and not name.startswith("echo_floor"):
            row["p50_x_floor"] = row["p50_ms"] / floor
        if ":cql" in name and name.replace(":cql", ":embedded") in rows:
            twin = rows[name.replace(":cql", ":embedded")]
            if row.get("rps") and twin.get("rps"):
                row["rps_x_embedded"] = row["rps"] / twin["rps"]
            if row.get("p50_ms") and twin.get("p50_ms"):
                row["p50_x_embedded"] = row["p50_ms"] / twin["p50_ms"]
    return rows


async def echo_floor(stack_urls, pki_dir: Path, state_dir: Path) -> dict:
    """The bare echo RPC on the same runner and TLS, one call at a time."""
    env = {"LATCHKEY_STATE_DIR": str(state_dir / "echo"), "LATCHKEY_CERTS_DIR": str(pki_dir),
           "LATCHKEY_CLIENT_TLS_CA": str(pki_dir / "ca.pem"), "LATCHKEY_CLIENT_TLS_CERT": str(pki_dir / "admin.pem"),
           "LATCHKEY_CLIENT_TLS_KEY": str(pki_dir / "admin-key.pem"), "LATCHKEY_NATS_URL": stack_urls.nats_url}
    port = free_port()
    echo = start_module("bench.echo_server", {**os.environ, **env}, port)
    try:
        async with aio_channel(f"localhost:{port}", door_tls(pki_dir, "bench-floor")) as ch:
            call = ch.unary_unary("/latchkey.bench.Echo/Echo")

            async def one(i):
                await call(b"x" * 64, timeout=5)

            return await closed_loop(one, 1, 3.0)
    finally:
        echo.terminate()
        echo.wait(timeout=15)


async def view_rows(backend: str, stack_urls, pki_dir: Path, state: Path, env: dict) -> dict:
    services = start_services(stack_urls, pki_dir, state, names=("permissions", "access"), extra_env={
        **env, "LATCHKEY_ACCESS_WORKERS": "1", "LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES": "0",
        "LATCHKEY_ACCESS_INSTANCE": f"bench-{backend}"})
    rows = {}
    try:
        async with aio_channel(services.targets["permissions"], tls(pki_dir, "admin")) as pch:
            admin = permissions_pb2_grpc.PermissionsServiceStub(pch)
            door, cards, revision = await seed(admin, f"cql-{backend}", VIEW_KEYS)
        async with aio_channel(services.targets["access"], door_tls(pki_dir, door.door_id)) as ch:
            stub = access_pb2_grpc.AccessServiceStub(ch)
            rows[f"view_catch_up_after_seed:{backend}"] = await catch_up(stub, door, cards[0], revision)
            r = aioredis.Redis.from_url(stack_urls.redis_url)
            try:
                for n in IN_FLIGHT:
                    await r.flushall()
                    rows[f"view_hit_after_flush@{n}:{backend}"] = await each_card_once(stub, door, cards, n)
            finally:
                await r.aclose()
    finally:
        services.stop()
    return rows


async def catch_up(stub, door, card, revision: int, limit_s: float = 120.0) -> dict:
    """From the last seeding write's answer until Unlock shows its revision (asked with min_revision)."""
    t0 = time.perf_counter()
    while True:
        answer = await stub.Unlock(access_pb2.UnlockRequest(door_id=door.door_id, credential=card,
                                                            min_revision=revision, request_id=uuid.uuid4().hex),
                                   timeout=5)
        if answer.decision == ev.DECISION_GRANTED:
            elapsed = time.perf_counter() - t0
            return {"calls": revision, "catch_up_ms": elapsed * 1e3}
        assert answer.reason == ev.DECISION_REASON_STALE_VIEW, answer
        assert time.perf_counter() - t0 < limit_s, f"the view did not reach revision {revision} in {limit_s} s"


async def each_card_once(stub, door, cards, in_flight: int) -> dict:
    latencies: list[float] = []
    queue = list(cards)

    async def worker():
        while queue:
            card = queue.pop()
            t0 = time.perf_counter()
            answer = await stub.Unlock(access_pb2.UnlockRequest(door_id=door.door_id, credential=card,
                                                                request_id=uuid.uuid4().hex), timeout=5)
            latencies.append(time.perf_counter() - t0)
            assert answer.decision == ev.DECISION_GRANTED, answer

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return summary_ms(latencies, time.perf_counter() - t0)


async def view_apply(backend: str, state: Path, env: dict) -> dict:
    """The view adapter alone: projector-sized batches of new pairs, written one batch at a time."""
    if backend == "embedded":
        from services.access.adapters.sqlite_view import SqliteUnlockView

        view = SqliteUnlockView(state / "view.sqlite")
    else:
        from services.access.adapters.scylla_view import ScyllaUnlockView, apply_schema

        settings = ScyllaSettings.from_env(env)
        await apply_schema(settings, replication_factor=1)
        view = ScyllaUnlockView(settings, "bench-apply")
    await view.open()
    try:
        payload = b"\x08\x01" * 40
        t0 = time.perf_counter()
        for b in range(APPLY_BATCHES):
            pairs = [PairRow(f"door-{b}", f"user-{i}", b + 1, payload) for i in range(APPLY_PAIRS)]
            await view.apply(ViewBatch(pairs=pairs, watermark=b + 1))
        elapsed = time.perf_counter() - t0
    finally:
        await view.close()
    return {"calls": APPLY_BATCHES * APPLY_PAIRS, "rps": APPLY_BATCHES * APPLY_PAIRS / elapsed,
            "batch_ms": elapsed / APPLY_BATCHES * 1e3}


async def prefill(backend: str, state: Path, env: dict, count: int) -> None:
    """`count` decisions written straight into the store before the service starts (set-up, not measured)."""
    if backend == "embedded":
        from services.audit.adapters.sqlite_store import SqliteAuditStore

        store = SqliteAuditStore(state / "audit" / "audit.sqlite")
    else:
        from services.audit.adapters.scylla_store import ScyllaAuditStore, apply_schema

        settings = ScyllaSettings.from_env(env)
        await apply_schema(settings, replication_factor=1, retention_days=30)
        store = ScyllaAuditStore(settings, retention_days=30)
    await store.open()
    door = "bulk-" + uuid.uuid4().hex[:8]
    try:
        for start in range(0, count, 2000):
            envs = [decision(door) for _ in range(min(2000, count - start))]
            batch = [to_record(e, e.SerializeToString()) for e in envs]
            await store.append(batch)
    finally:
        await store.close()


def fresh_database(dsn: str) -> str:
    name = f"lk_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


async def audit_rows(backend: str, stack_urls, pki_dir: Path, state: Path, env: dict) -> dict:
    env = {**env, "LATCHKEY_AUDIT_RETENTION_DAYS": "30"}
    await prefill(backend, state, env, STORED)
    await purge_streams(stack_urls.nats_url)
    services = start_services(stack_urls, pki_dir, state, names=("audit",), extra_env=env)
    rows = {}
    nc = await nats.connect(stack_urls.nats_url)
    try:
        js = nc.jetstream()
        async with aio_channel(services.targets["audit"], tls(pki_dir, "auditor")) as ch:
            stub = audit_pb2_grpc.AuditServiceStub(ch)
            rows[f"auditlog_stream:{backend}"] = await stream_rate(stub)
            rows[f"auditlog_stream_max_batch_256:{backend}"] = await stream_rate(stub, batch=256)
            rows[f"audit_ingest:{backend}"] = await ingest(js, stub)
            rows[f"publish_to_visible_lag:{backend}"] = await visible_lag(js, stub)
    finally:
        await nc.close()
        services.stop()
    return rows
