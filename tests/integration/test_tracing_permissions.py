"""GrantAccess → outbox → relay → JetStream: one trace, exported by OTLP to a real receiver.

An in-process permissions server (its interceptor makes the server span) on a
fresh database; its relay starts only once the test has read the grant's
outbox row, so the row can be seen before the relay deletes it. The message is
read back from the test stack's PERMISSIONS stream by its `Nats-Msg-Id`.
Migration 0004 is checked on a database that already holds waiting rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import nats
import psycopg
import pytest
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc
from nats.js.api import ConsumerConfig, DeliverPolicy

from latchkit.bus import PERMISSIONS_STREAM, ensure_streams
from services.permissions import migrations
from services.permissions.adapters.outbox_relay import libpq_dsn
from tests.integration.conftest import aio_channel, start_permissions

GRANT_SPAN = "latchkey.permissions.v1.PermissionsService/GrantAccess"


@dataclass
class Relayed:
    """What one GrantAccess left behind: its outbox rows' traceparents, then its JetStream messages' headers."""

    row_traceparents: list[str | None]
    headers: list[dict]


@pytest.fixture
def tracing_service() -> str:
    return "permissions"


async def _grant_and_relay(urls, pki) -> Relayed:
    service, running = await start_permissions(urls, pki, relay=False)
    nc = await nats.connect(urls.nats_url)
    relay = None
    try:
        async with aio_channel(service.port, pki.tls("admin")) as ch:
            admin = permissions_pb2_grpc.PermissionsServiceStub(ch)
            user = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="Ada")))).user
            door = (await admin.CreateDoor(pm.CreateDoorRequest(
                door=pm.Door(name="Lab", time_zone="Europe/Madrid")))).door
            granted = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(
                user_id=user.user_id, door_id=door.door_id)))
        # The grant's outbox rows (the grant, and the access it changes), before any relay has seen them.
        async with await psycopg.AsyncConnection.connect(libpq_dsn(service.dsn)) as conn:
            rows = await (await conn.execute(
                "SELECT event_id::text, traceparent FROM outbox WHERE revision = %s ORDER BY idx",
                (granted.revision,))).fetchall()
        assert len(rows) == 2
        # Subscribe to what is published from now on, then let the server's own relay run.
        js = nc.jetstream()
        await ensure_streams(js, service.app.settings.bus)
        sub = await js.pull_subscribe("latchkey.permissions.>", durable=None, stream=PERMISSIONS_STREAM,
                                      config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        relay = asyncio.create_task(service.app.relay.run())
        # The relay publishes the user, the door, then the grant's events: read until the last of them.
        wanted = {event_id: None for event_id, _ in rows}
        while None in wanted.values():
            (msg,) = await sub.fetch(1, timeout=10)
            await msg.ack()
            event_id = (msg.headers or {}).get("Nats-Msg-Id")
            if event_id in wanted:
                wanted[event_id] = dict(msg.headers)
        return Relayed([traceparent for _, traceparent in rows], list(wanted.values()))
    finally:
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        await nc.close()
        await running.stop(0.5)
        await service.app.db.close()


def _names(traceparent: str | None) -> tuple[str, str]:
    """The (trace id, parent span id) a sampled W3C traceparent names."""
    version, trace_id, span_id, flags = (traceparent or "").split("-")
    assert version == "00" and int(flags, 16) & 1, traceparent
    return trace_id, span_id


async def test_a_grant_is_published_in_the_trace_of_its_grantaccess_call(collector, urls, pki):
    relayed = await _grant_and_relay(urls, pki)
    spans = await collector.wait_for(
        lambda s: any(x.name == GRANT_SPAN for x in s) and sum(x.kind == "PRODUCER" for x in s) >= 4,
        "the GrantAccess span and the relay's four publish spans")
    (grant,) = [s for s in spans if s.name == GRANT_SPAN]
    # Each outbox row of the write kept the call's server span as its parent-to-be.
    assert [_names(tp) for tp in relayed.row_traceparents] == [(grant.trace_id, grant.span_id)] * 2
    # The relay published each row under a publish span, a child of the GrantAccess span, in its trace.
    publishes = [s for s in spans if s.kind == "PRODUCER" and s.parent_span_id == grant.span_id]
    assert sorted(s.name for s in publishes) == ["latchkey.permissions.access_changed publish",
                                                 "latchkey.permissions.grant_changed publish"]
    assert all(s.trace_id == grant.trace_id and s.service == "latchkey-permissions" for s in publishes)
    # Each JetStream message names its publish span as parent: consumers continue the trace.
    assert sorted(_names(h["traceparent"]) for h in relayed.headers) == sorted(
        (grant.trace_id, s.span_id) for s in publishes)


async def test_with_tracing_off_neither_the_row_nor_the_message_carries_a_trace(tracing_off, urls, pki):
    relayed = await _grant_and_relay(urls, pki)
    assert relayed.row_traceparents == [None, None]
    assert [set(h) for h in relayed.headers] == [{"Nats-Msg-Id"}] * 2


def _alembic(dsn: str, *, to: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = migrations.sqlalchemy_url(dsn)
    (command.downgrade if down else command.upgrade)(config, to)


def test_an_existing_database_upgrades_and_its_waiting_rows_stay_untraced(urls):
    # A database at 0003 with one outbox row still waiting for the relay.
    name = f"lk_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(urls.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = urls.postgres_dsn.rsplit("/", 1)[0] + "/" + name
    _alembic(dsn, to="0003")
    event_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO outbox (revision, idx, event_id, subject, payload) VALUES (1, 0, %s, %s, %s)",
                     (event_id, "latchkey.permissions.test", b"x"))
    # `latchkey migrate` (upgrade to head): the row is kept, with no trace.
    migrations.upgrade({"LATCHKEY_POSTGRES_DSN": dsn})
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT event_id::text, traceparent FROM outbox").fetchall() == [(event_id, None)]
    # And back: the column goes, the row stays.
    _alembic(dsn, to="0003", down=True)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT event_id::text FROM outbox").fetchall() == [(event_id,)]
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'outbox' "
                            "AND column_name = 'traceparent'").fetchone() == (0,)
