"""Invariants under concurrency, and the outbox relay through its faults, on real PostgreSQL and JetStream."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import nats
import psycopg
import pytest
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from access_rules.codec import from_event
from access_rules.rules import evaluate
from latchkit import envelope
from latchkit.bus import PERMISSIONS_STREAM, BusSettings
from services.permissions.adapters.outbox_relay import OutboxRelay
from tests.integration.conftest import aio_channel, start_permissions
from tests.waiting import until


@pytest.fixture
async def quiet(urls, pki):
    """A permissions server on a fresh database with no relay: the outbox keeps every event."""
    service, running = await start_permissions(urls, pki, relay=False)
    async with aio_channel(service.port, pki.tls("admin")) as ch:
        yield service, permissions_pb2_grpc.PermissionsServiceStub(ch)
    await running.stop(0.5)
    await service.app.db.close()


async def outbox(dsn: str) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (await conn.execute(
            "SELECT revision, idx, event_id::text, payload, create_time FROM outbox ORDER BY revision, idx")).fetchall()
    return rows


async def stream_events(nats_url: str, event_ids: set[str]) -> list:
    """Envelopes in the PERMISSIONS stream whose id is in `event_ids`, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(PERMISSIONS_STREAM)
        found = []
        sub = await js.pull_subscribe("latchkey.permissions.>", durable=None, stream=PERMISSIONS_STREAM)
        remaining = info.state.messages
        while remaining > 0:
            msgs = await sub.fetch(min(remaining, 1000), timeout=5)
            remaining -= len(msgs)
            for msg in msgs:
                env = envelope.parse(msg.data)
                if env.event_id in event_ids:
                    found.append(env)
                await msg.ack()
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def test_concurrent_writers_keep_revisions_contiguous_and_events_consistent(quiet):
    service, admin = quiet
    # One user, one door, a group the user is in and out of, direct grants granted and revoked, all at once.
    u = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="C")))).user
    d = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="D", time_zone="UTC")))).door
    g = (await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=uuid.uuid4().hex)))).group
    await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(group_id=g.group_id, door_id=d.door_id)))

    async def direct():
        granted = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=u.user_id,
                                                                               door_id=d.door_id)))
        revoked = await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=granted.grant.grant_id))
        return [granted.revision, revoked.revision]

    async def membership(add: bool):
        call = admin.AddGroupMember if add else admin.RemoveGroupMember
        request = (pm.AddGroupMemberRequest if add else pm.RemoveGroupMemberRequest)(
            group_id=g.group_id, user_id=u.user_id)
        try:
            return [(await call(request)).revision]
        except Exception:  # removing a non-member is NOT_FOUND: fine here
            return []

    results = await asyncio.gather(*[direct() for _ in range(15)],
                                   *[membership(i % 2 == 0) for i in range(20)])
    rows = await outbox(service.dsn)
    revisions = sorted({r[0] for r in rows})
    # Every committed write has its own revision, contiguous from 1, and the
    # order the rows were written in is the revision order (commit order).
    assert revisions == list(range(1, len(revisions) + 1))
    assert [r[4] for r in rows] == sorted(r[4] for r in rows)
    # Writes that change something never share a revision (a no-op AddGroupMember
    # answers with the current one, so only grants and revokes are counted).
    changing = [rev for result in results[:15] for rev in result]
    assert len(set(changing)) == len(changing) == 30
    # Folding the pair's events by version gives exactly what ExplainAccess says.
    latest = {}
    for _, _, _, payload, _ in rows:
        env = ev.Envelope.FromString(payload)
        if env.WhichOneof("payload") == "access_changed":
            key = (env.access_changed.door_id, env.access_changed.user_id)
            if env.aggregate_version >= latest.get(key, (0,))[0]:
                latest[key] = (env.aggregate_version, env.access_changed)
    folded = evaluate(from_event(latest[(d.door_id, u.user_id)][1]), dt.datetime.now(dt.UTC))
    explained = await admin.ExplainAccess(pm.ExplainAccessRequest(user_id=u.user_id, door_id=d.door_id))
    assert (int(folded.reason), folded.granted) == (explained.reason, explained.decision == ev.DECISION_GRANTED)
    assert sorted(r.grant_id for r, _ in folded.per_rule) == sorted(x.grant_id for x in explained.grants)


async def test_deleting_a_user_while_granting_leaves_no_orphan(quiet):
    service, admin = quiet
    u = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="O")))).user
    d = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="D", time_zone="UTC")))).door

    async def grant():
        try:
            await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=u.user_id, door_id=d.door_id)))
        except Exception:  # NOT_FOUND once the user is gone
            pass

    await asyncio.gather(*[grant() for _ in range(10)], admin.DeleteUser(pm.DeleteUserRequest(user_id=u.user_id)),
                         *[grant() for _ in range(10)])
    async with await psycopg.AsyncConnection.connect(service.dsn) as conn:
        orphans = await (await conn.execute(
            "SELECT count(*) FROM grants WHERE user_id = %s OR (user_id IS NOT NULL AND user_id NOT IN "
            "(SELECT user_id FROM users))", (u.user_id,))).fetchone()
    assert orphans[0] == 0


async def test_relay_survives_nats_outage_and_publishes_in_order_exactly_once(urls, pki, stack):
    service, running = await start_permissions(urls, pki)
    try:
        async with aio_channel(service.port, pki.tls("admin")) as ch:
            admin = permissions_pb2_grpc.PermissionsServiceStub(ch)
            # NATS goes away; admins keep writing and every write succeeds.
            stack.stop_component("nats")
            try:
                for i in range(20):
                    await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name=f"during outage {i}")))
                committed = await outbox(service.dsn)
                assert len(committed) >= 20
            finally:
                stack.start_component("nats")

            async def drained():
                return not await outbox(service.dsn)
            await until(drained, "the outbox to drain after NATS returned", limit_s=30)
        ids = [r[2] for r in committed]
        published = await stream_events(urls.nats_url, set(ids))
        # Exactly once each, and in revision order.
        assert [e.event_id for e in published] == ids
        assert [(e.revision, e.revision_event_index) for e in published] == [(r[0], r[1]) for r in committed]
    finally:
        await running.stop(0.5)
        await service.app.db.close()


class DiesBeforeDelete:
    """The relay's connection, killed between JetStream's ack and the outbox delete."""

    def __init__(self, conn) -> None:
        self.conn = conn

    async def execute(self, sql, *args):
        if sql.startswith("DELETE"):
            raise RuntimeError("relay killed before marking rows published")
        return await self.conn.execute(sql, *args)


async def test_relay_killed_between_publish_and_mark_duplicates_nothing(quiet, urls):
    service, admin = quiet
    for i in range(5):
        await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name=f"k{i}")))
    committed = await outbox(service.dsn)
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    relay = OutboxRelay(service.dsn, bus)
    nc = await nats.connect(urls.nats_url)
    try:
        async with await psycopg.AsyncConnection.connect(service.dsn, autocommit=True) as conn:
            with pytest.raises(RuntimeError, match="killed"):
                await relay.publish_round(DiesBeforeDelete(conn), nc.jetstream())
            # A new relay publishes the same rows again, then marks them.
            assert await relay.publish_round(conn, nc.jetstream()) == len(committed)
    finally:
        await nc.close()
    assert not await outbox(service.dsn)
    published = await stream_events(urls.nats_url, {r[2] for r in committed})
    assert [e.event_id for e in published] == [r[2] for r in committed]


async def test_one_relay_leads_and_another_takes_over(quiet, urls):
    service, admin = quiet
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    first, second = OutboxRelay(service.dsn, bus, poll_seconds=0.05), OutboxRelay(service.dsn, bus, poll_seconds=0.05)
    t1 = asyncio.create_task(first.run())

    async def first_leads():
        return first.is_leader
    await until(first_leads, "the first relay to lead")
    t2 = asyncio.create_task(second.run())
    ids = [(await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="a")))).user.user_id]

    async def drained():
        return not await outbox(service.dsn)
    await until(drained, "the leader to publish")
    assert not second.is_leader
    # The leader dies; the other relay takes over and publishes what follows.
    t1.cancel()
    await asyncio.gather(t1, return_exceptions=True)

    async def second_leads():
        return second.is_leader
    await until(second_leads, "the second relay to take over")
    await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="b")))
    await until(drained, "the new leader to publish")
    t2.cancel()
    await asyncio.gather(t2, return_exceptions=True)
    assert ids
