"""Group commit and overload on real PostgreSQL: writes that wait for the revision lock are
committed together, each with its own outcome and events; past the time budget writes are
refused at once with RESOURCE_EXHAUSTED and a retry delay, and reads still answer.

A transaction of this test holding the revision counter's row lock makes the service's writes
queue deterministically: while it is held nothing commits, and the queue can be observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import psycopg
import pytest
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit import envelope
from latchkit.errors import retry_delay_s
from tests.integration.conftest import aio_channel, start_permissions
from tests.integration.test_permissions_consistency import outbox
from tests.waiting import until

MISSING = str(uuid.uuid4())


@contextlib.asynccontextmanager
async def revision_lock_held(dsn: str):
    """Hold the row every write transaction takes first: no write commits until the block ends."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("SELECT revision FROM revision_counter WHERE id = 1 FOR UPDATE")
        yield
        await conn.rollback()


@contextlib.asynccontextmanager
async def service_with(urls, pki, **overrides):
    service, running = await start_permissions(urls, pki, relay=False, **overrides)
    try:
        async with aio_channel(service.port, pki.tls("admin")) as ch:
            yield service, permissions_pb2_grpc.PermissionsServiceStub(ch)
    finally:
        await running.stop(0.5)
        await service.app.db.close()


async def new_user(admin, external_id: str = "") -> pm.User:
    return (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="G", external_id=external_id)))).user


async def new_door(admin) -> pm.Door:
    return (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="D", time_zone="UTC")))).door


def grant(admin, user_id: str, door_id: str):
    """A GrantAccess, not yet started."""
    return lambda: admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user_id, door_id=door_id)))


async def queued_behind_a_held_lock(service, first, then: list) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Start `first`, wait until its transaction waits on the lock, then queue `then` behind it.

    Both are functions that start the call: a gRPC aio call starts when it is made, not when awaited."""
    writes = service.app.db.writes
    head = asyncio.ensure_future(first())

    async def first_waits_on_the_lock() -> bool:
        async with await psycopg.AsyncConnection.connect(service.dsn, autocommit=True) as conn:
            row = await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).fetchone()
        return bool(row and row[0] == 1)

    await until(first_waits_on_the_lock, "the first write to wait on the revision lock")
    rest: list[asyncio.Future] = []
    for call in then:  # one after the other, so they queue in this order
        rest.append(asyncio.ensure_future(call()))

        async def queued(count: int = len(rest)) -> bool:
            return writes.waiting == count

        await until(queued, f"write {len(rest)} to queue behind it")
    return head, rest


def events_by_revision(rows) -> dict[int, list]:
    found: dict[int, list] = {}
    for revision, _idx, _event_id, payload, _at in rows:
        found.setdefault(revision, []).append(envelope.parse(payload))
    return found


async def test_writes_queued_behind_a_commit_share_its_successor_and_keep_their_own_events(urls, pki):
    async with service_with(urls, pki, write_queue_budget_ms=60_000) as (service, admin):
        users = [await new_user(admin) for _ in range(6)]
        door = await new_door(admin)
        async with revision_lock_held(service.dsn):
            head, rest = await queued_behind_a_held_lock(
                service, grant(admin, users[0].user_id, door.door_id),
                [grant(admin, u.user_id, door.door_id) for u in users[1:]])
            assert not head.done() and not any(task.done() for task in rest)
        first = await head
        grouped = await asyncio.gather(*rest)
        rows = await outbox(service.dsn)

    # The five that waited together are one commit: one revision, right after the first's.
    assert {answer.revision for answer in grouped} == {first.revision + 1}
    revisions = sorted({row[0] for row in rows})
    assert revisions == list(range(1, len(revisions) + 1))
    by_revision = events_by_revision(rows)
    shared = by_revision[first.revision + 1]
    # One revision's events are numbered as one transaction's, whoever wrote them.
    assert [e.revision_event_index for e in shared] == list(range(len(shared)))
    assert {e.revision_event_count for e in shared} == {len(shared)}
    # Every write's own events, exactly once, at the revision its answer gave.
    for answer in [first, *grouped]:
        mine = [e for e in by_revision[answer.revision]
                if e.WhichOneof("payload") == "grant_changed" and e.grant_changed.grant_id == answer.grant.grant_id]
        assert len(mine) == 1
        access = [e for e in by_revision[answer.revision] if e.WhichOneof("payload") == "access_changed"
                  and e.access_changed.user_id == answer.grant.user_id]
        assert len(access) == 1 and access[0].access_changed.user_id == answer.grant.user_id
    all_grants = [e.grant_changed.grant_id for events in by_revision.values() for e in events
                  if e.WhichOneof("payload") == "grant_changed"]
    assert len(all_grants) == len(set(all_grants)) == 6


async def test_one_failing_write_leaves_its_group_mates_committed(urls, pki):
    async with service_with(urls, pki, write_queue_budget_ms=60_000) as (service, admin):
        taken = f"ext-{uuid.uuid4().hex}"
        await new_user(admin, external_id=taken)
        a, b, c = [await new_user(admin) for _ in range(3)]
        door = await new_door(admin)
        async with revision_lock_held(service.dsn):
            head, (ok_1, missing_door, duplicate, ok_2) = await queued_behind_a_held_lock(
                service, grant(admin, a.user_id, door.door_id), [
                    grant(admin, b.user_id, door.door_id),
                    # Fails inside the database (a foreign key): the transaction must survive it.
                    grant(admin, b.user_id, MISSING),
                    # Fails in the use case's own check.
                    lambda: admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="dup",
                                                                               external_id=taken))),
                    grant(admin, c.user_id, door.door_id),
                ])
        await head
        with pytest.raises(grpc.aio.AioRpcError) as not_found:
            await missing_door
        with pytest.raises(grpc.aio.AioRpcError) as exists:
            await duplicate
        first, second = await ok_1, await ok_2
        rows = await outbox(service.dsn)
        same_external = [u for u in (await admin.ListUsers(pm.ListUsersRequest(page_size=500))).users
                         if u.external_id == taken]

    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    assert "door_id" in not_found.value.details()
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.revision == second.revision  # committed together, the failures between them
    grants = {e.grant_changed.grant_id: e.grant_changed.door_id for events in events_by_revision(rows).values()
              for e in events if e.WhichOneof("payload") == "grant_changed"}
    assert MISSING not in grants.values()
    assert first.grant.grant_id in grants and second.grant.grant_id in grants
    assert len(same_external) == 1


async def test_two_writes_on_one_pair_never_share_a_revision(urls, pki):
    """Consumers apply a pair's changes by version (the revision): two in one revision could not be ordered."""
    async with service_with(urls, pki, write_queue_budget_ms=60_000) as (service, admin):
        user, other = await new_user(admin), await new_user(admin)
        door, second_door = await new_door(admin), await new_door(admin)
        old = await grant(admin, user.user_id, door.door_id)()
        async with revision_lock_held(service.dsn):
            head, (revoking, granting, elsewhere) = await queued_behind_a_held_lock(
                service, grant(admin, other.user_id, door.door_id), [
                    lambda: admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=old.grant.grant_id)),
                    grant(admin, user.user_id, door.door_id),
                    grant(admin, other.user_id, second_door.door_id)])
        await head
        revoked, granted, third = await revoking, await granting, await elsewhere
        rows = await outbox(service.dsn)

    assert granted.revision == revoked.revision + 1  # the second runs first in the next transaction
    assert third.revision == granted.revision  # ... where a write on another pair joins it
    latest = {}
    for events in events_by_revision(rows).values():
        for e in events:
            if e.WhichOneof("payload") == "access_changed" and e.access_changed.user_id == user.user_id:
                key = (e.access_changed.door_id, e.access_changed.user_id)
                assert e.aggregate_version != latest.get(key, (0, None))[0]  # one change per version
                latest[key] = (e.aggregate_version, e.access_changed)
    newest = latest[(door.door_id, user.user_id)][1]
    assert [r.grant_id for r in newest.rules] == [granted.grant.grant_id]  # revoked first, then granted


async def test_writes_of_one_kind_on_one_pair_still_get_revisions_of_their_own(urls, pki):
    """Grants from one caller queued together run as one call, unless two change one pair."""
    async with service_with(urls, pki, write_queue_budget_ms=60_000) as (service, admin):
        user, other = await new_user(admin), await new_user(admin)
        door, second_door = await new_door(admin), await new_door(admin)
        async with revision_lock_held(service.dsn):
            head, calls = await queued_behind_a_held_lock(
                service, grant(admin, other.user_id, door.door_id),
                [grant(admin, user.user_id, door.door_id), grant(admin, user.user_id, door.door_id),
                 grant(admin, other.user_id, second_door.door_id)])
        await head
        first, again, elsewhere = [await call for call in calls]
        rows = await outbox(service.dsn)

    assert again.revision == first.revision + 1 and elsewhere.revision == first.revision
    changes = {revision: [e.access_changed for e in events if e.WhichOneof("payload") == "access_changed"
                          and e.access_changed.user_id == user.user_id]
               for revision, events in events_by_revision(rows).items()}
    assert [r.grant_id for r in changes[first.revision][0].rules] == [first.grant.grant_id]
    assert sorted(r.grant_id for r in changes[again.revision][0].rules) == sorted(
        [first.grant.grant_id, again.grant.grant_id])


async def test_a_wrong_write_in_a_call_for_many_fails_alone(urls, pki):
    async with service_with(urls, pki, write_queue_budget_ms=60_000) as (service, admin):
        a, b, c = await new_user(admin), await new_user(admin), await new_user(admin)
        door = await new_door(admin)
        async with revision_lock_held(service.dsn):
            head, (for_a, for_b, for_c) = await queued_behind_a_held_lock(
                service, grant(admin, c.user_id, door.door_id),
                [grant(admin, a.user_id, door.door_id), grant(admin, b.user_id, MISSING),
                 grant(admin, b.user_id, door.door_id)])
        await head
        first, last = await for_a, await for_c
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await for_b
        rows = await outbox(service.dsn)

    # The call for all three failed on the missing door; run one by one, only that one failed,
    # with the error its single call gives.
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details().startswith(f"grant.door_id {MISSING}")
    assert first.revision == last.revision
    grants = [e.grant_changed for e in events_by_revision(rows)[first.revision]
              if e.WhichOneof("payload") == "grant_changed"]
    assert sorted(g.grant_id for g in grants) == sorted([first.grant.grant_id, last.grant.grant_id])


def retry_delay_ms(error: grpc.aio.AioRpcError) -> int | None:
    delay = retry_delay_s(error)
    return None if delay is None else round(delay * 1000)


async def test_past_the_time_budget_writes_are_refused_at_once_and_reads_still_answer(urls, pki):
    async with service_with(urls, pki, write_queue_budget_ms=100) as (service, admin):
        user = await new_user(admin)
        door = await new_door(admin)
        before = len(await outbox(service.dsn))
        admitted: list[asyncio.Task] = []
        refusals: list[grpc.aio.AioRpcError] = []
        async with revision_lock_held(service.dsn):
            head, _ = await queued_behind_a_held_lock(service, grant(admin, user.user_id, door.door_id), [])

            async def refused() -> bool:
                attempt = asyncio.ensure_future(admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="x"))))
                await asyncio.wait([attempt], timeout=0.05)
                if not attempt.done():
                    admitted.append(attempt)
                    return False
                error = attempt.exception()
                if isinstance(error, grpc.aio.AioRpcError):
                    refusals.append(error)
                return error is not None

            await until(refused, "a write refused while the database is stuck")
            # Writes admitted before that were never run: they end too, without the database.
            ended = await asyncio.gather(*admitted, return_exceptions=True)
            # Reads do not queue behind the writes.
            read = await admin.GetUser(pm.GetUserRequest(user_id=user.user_id), timeout=5)
            assert not head.done()
        granted = await head
        after = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id,
                                                                             door_id=door.door_id)), timeout=5)
        rows = await outbox(service.dsn)

    assert refusals[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (retry_delay_ms(refusals[-1]) or 0) > 0
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               and retry_delay_ms(e) for e in ended)
    assert read.user.user_id == user.user_id
    # Only the stuck write and the one after it wrote anything: refused writes wrote nothing.
    written = [envelope.parse(r[3]) for r in rows[before:]]
    assert {e.WhichOneof("payload") for e in written} == {"grant_changed", "access_changed"}
    assert {e.grant_changed.grant_id for e in written if e.WhichOneof("payload") == "grant_changed"} == {
        granted.grant.grant_id, after.grant.grant_id}
    assert after.revision == granted.revision + 1
