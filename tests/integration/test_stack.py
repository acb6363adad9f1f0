"""The local stack's servers are real: write to each and read back."""

from __future__ import annotations

import uuid

import nats
import psycopg
import redis.asyncio as aioredis
from nats.js.api import StreamConfig


async def test_postgres_round_trip(urls):
    table = f"probe_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(urls.postgres_dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {table} (id int primary key, body text)")
        await conn.execute(f"INSERT INTO {table} VALUES (1, 'hello')")
        row = await (await conn.execute(f"SELECT body FROM {table} WHERE id = 1")).fetchone()
        await conn.execute(f"DROP TABLE {table}")
    assert row == ("hello",)


async def test_redis_round_trip(urls):
    client = aioredis.from_url(urls.redis_url)
    key = f"probe:{uuid.uuid4().hex}"
    try:
        await client.set(key, b"v1")
        assert await client.get(key) == b"v1"
    finally:
        await client.aclose()


async def test_jetstream_round_trip_and_dedup(urls):
    nc = await nats.connect(urls.nats_url)
    try:
        js = nc.jetstream()
        name = f"PROBE_{uuid.uuid4().hex[:8].upper()}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"probe.{name}.>"]))
        first = await js.publish(f"probe.{name}.a", b"one", headers={"Nats-Msg-Id": "m-1"})
        again = await js.publish(f"probe.{name}.a", b"one", headers={"Nats-Msg-Id": "m-1"})
        assert again.duplicate and again.seq == first.seq
        sub = await js.pull_subscribe(f"probe.{name}.>", durable=None, stream=name)
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"one"]
        info = await js.stream_info(name)
        assert info.state.messages == 1
        await js.delete_stream(name)
    finally:
        await nc.close()


def test_up_is_idempotent_and_status_reports_running(stack):
    before = stack.status()
    stack.up()
    after = stack.status()
    # The CQL engine runs only when asked for (`up(cql=True)`); the others always.
    assert all(c["running"] for c in after.values() if c.get("enabled", True))
    assert before == after
