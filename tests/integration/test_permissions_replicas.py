"""Two permissions replicas on one database, as production runs them (deploy/k8s: more than one
permissions pod). Each replica commits its own groups; the revision counter's row lock makes
the groups of both take turns. So revisions stay contiguous and in commit order across
replicas, each write is answered with the revision its events carry, and no aggregate gets
two events at one version (consumers apply an aggregate's events by version).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import psycopg
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from access_rules.codec import from_event
from access_rules.rules import evaluate
from tests.integration.conftest import aio_channel, fresh_database, start_permissions
from tests.integration.test_permissions_consistency import outbox
from tests.integration.test_permissions_group_commit import (
    events_by_revision,
    grant,
    new_door,
    new_user,
    revision_lock_held,
)
from tests.waiting import until

REPLICAS = 2


@contextlib.asynccontextmanager
async def replicas(urls, pki):
    """Two permissions servers (no relay: the outbox keeps every event) on one fresh database."""
    dsn = fresh_database(urls)
    started = [await start_permissions(urls, pki, relay=False, dsn=dsn, write_queue_budget_ms=60_000)
               for _ in range(REPLICAS)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            stubs = [permissions_pb2_grpc.PermissionsServiceStub(
                await stack.enter_async_context(aio_channel(service.port, pki.tls("admin"))))
                for service, _ in started]
            yield [service for service, _ in started], stubs, dsn
    finally:
        for service, running in started:
            await running.stop(0.5)
            await service.app.db.close()


async def lock_waiters(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).fetchone()
    return row[0] if row else 0


async def test_groups_of_two_replicas_take_turns_on_one_revision_sequence(urls, pki):
    async with replicas(urls, pki) as (services, (a, b), dsn):
        users = [await new_user(a) for _ in range(7)]
        door = await new_door(b)
        shared_user = users[0].user_id  # both replicas grant this pair in the same instant

        # Phase 1: each replica has a transaction waiting on the lock and a group queued behind it.
        async with revision_lock_held(dsn):
            heads = [asyncio.ensure_future(grant(stub, shared_user, door.door_id)()) for stub in (a, b)]

            async def both_wait_on_the_lock() -> bool:
                return await lock_waiters(dsn) == REPLICAS

            await until(both_wait_on_the_lock, "a transaction of each replica to wait on the revision lock")
            queued: list[list[asyncio.Future]] = [[], []]
            for i, (service, stub) in enumerate(zip(services, (a, b), strict=True)):
                for user in users[1 + 3 * i: 4 + 3 * i]:
                    queued[i].append(asyncio.ensure_future(grant(stub, user.user_id, door.door_id)()))

                    count = len(queued[i])

                    async def in_queue(writes=service.app.db.writes, count=count) -> bool:
                        return writes.waiting == count

                    await until(in_queue, f"replica {i}'s write {len(queued[i])} to queue")
            assert not any(f.done() for f in [*heads, *queued[0], *queued[1]])
        head_answers = await asyncio.gather(*heads)
        group_answers = [await asyncio.gather(*q) for q in queued]

        # Phase 2: free-running writes on both replicas, revoking and granting the same pairs.
        async def churn(stub, user_id: str, rounds: int) -> list:
            answers = []
            for _ in range(rounds):
                granted = await stub.GrantAccess(pm.GrantAccessRequest(
                    grant=pm.Grant(user_id=user_id, door_id=door.door_id)))
                revoked = await stub.RevokeAccess(pm.RevokeAccessRequest(grant_id=granted.grant.grant_id))
                answers += [granted, revoked]
            return answers

        churned = await asyncio.gather(*(churn(stub, user.user_id, 5)
                                         for stub in (a, b) for user in users[:4]))
        rows = await outbox(dsn)
        explained = {u.user_id: await (b if i % 2 else a).ExplainAccess(pm.ExplainAccessRequest(
            user_id=u.user_id, door_id=door.door_id)) for i, u in enumerate(users)}

    # Revisions are contiguous from 1 across both replicas, and written in revision order.
    revisions = sorted({row[0] for row in rows})
    assert revisions == list(range(1, len(revisions) + 1))
    assert [row[4] for row in rows] == sorted(row[4] for row in rows)
    # Each replica's queued writes were one group (one revision); the two groups, and the two
    # writes of one pair, are different transactions.
    group_revisions = [{answer.revision for answer in answers} for answers in group_answers]
    assert all(len(r) == 1 for r in group_revisions)
    assert group_revisions[0] != group_revisions[1]
    assert head_answers[0].revision != head_answers[1].revision
    # Every answer's own grant event is at the revision it was answered with, exactly once.
    by_revision = events_by_revision(rows)
    answers = [*head_answers, *group_answers[0], *group_answers[1], *(x for c in churned for x in c)]
    for answer in answers:
        mine = [e for e in by_revision[answer.revision] if e.WhichOneof("payload") == "grant_changed"
                and e.grant_changed.grant_id == answer.grant.grant_id]
        assert len(mine) == 1
    assert len(answers) == 2 + 6 + 2 * 4 * 5 * 2
    # No aggregate has two events at one version, whichever replica wrote them.
    versions = [(e.aggregate_key, e.aggregate_version) for events in by_revision.values() for e in events]
    assert len(versions) == len(set(versions))
    # Folding each pair's AccessChanged events by version gives what ExplainAccess answers now.
    latest: dict[str, tuple[int, ev.AccessChanged]] = {}
    for events in by_revision.values():
        for e in events:
            if e.WhichOneof("payload") == "access_changed" and e.access_changed.door_id == door.door_id:
                if e.aggregate_version >= latest.get(e.access_changed.user_id, (0,))[0]:
                    latest[e.access_changed.user_id] = (e.aggregate_version, e.access_changed)
    now = dt.datetime.now(dt.UTC)
    for user in users:
        folded = evaluate(from_event(latest[user.user_id][1]), now)
        answer = explained[user.user_id]
        assert (int(folded.reason), folded.granted) == (answer.reason, answer.decision == ev.DECISION_GRANTED)
