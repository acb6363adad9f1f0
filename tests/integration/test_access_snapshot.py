"""ExportAccessSnapshot over gRPC: who may call it, and what one snapshot holds."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from services.permissions import snapshot
from tests.integration.conftest import aio_channel
from tests.waiting import until


@pytest.fixture
def service(own_permissions):
    return own_permissions


@pytest.fixture
def admin(own_admin):
    return own_admin


async def _snapshot(service, tls) -> list[pm.ExportAccessSnapshotResponse]:
    async with aio_channel(service.port, tls) as ch:
        stub = permissions_pb2_grpc.PermissionsServiceStub(ch)
        return [m async for m in stub.ExportAccessSnapshot(pm.ExportAccessSnapshotRequest(), timeout=30)]


async def _few_at_a_time(calls, at_once: int = 8) -> list:
    """Writes take turns on the revision lock: more in flight only wait for a pool connection."""
    results = []
    for start in range(0, len(calls), at_once):
        results += await asyncio.gather(*(call() for call in calls[start:start + at_once]))
    return results


async def _user(admin) -> str:
    reply = await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="u")))
    return reply.user.user_id


async def _door(admin) -> str:
    reply = await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="d", time_zone="UTC")))
    return reply.door.door_id


@pytest.mark.parametrize("identity", ["auditor", "door"])
async def test_snapshot_is_refused_to_identities_other_than_access_and_admins(service, pki, identity):
    tls = pki.tls("auditor") if identity == "auditor" else pki.issue("door", str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _snapshot(service, tls)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_empty_snapshot_is_one_message_with_the_revision(service, pki):
    messages = await _snapshot(service, pki.tls("access"))
    assert len(messages) == 1
    assert messages[0].revision == await service.app.db.current_revision()
    assert (messages[0].pairs_total, messages[0].credentials_total) == (0, 0)


async def test_snapshot_holds_active_pairs_and_every_credential_at_the_last_revision(service, admin, pki):
    # Direct grant for `direct`, a group grant reaching `member`, a revoked grant for `revoked`.
    direct, member, revoked, door = await _user(admin), await _user(admin), await _user(admin), await _door(admin)
    group = (await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=f"g-{uuid.uuid4()}")))).group
    await admin.AddGroupMember(pm.AddGroupMemberRequest(group_id=group.group_id, user_id=member))
    g_direct = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, user_id=direct)))
    g_group = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, group_id=group.group_id)))
    g_gone = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, user_id=revoked)))
    await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g_gone.grant.grant_id))
    # A credential for `direct` and a revoked one for `revoked`.
    active = await admin.IssueCredential(pm.IssueCredentialRequest(user_id=direct, kind=1, secret="s-active-1"))
    gone = await admin.IssueCredential(pm.IssueCredentialRequest(user_id=revoked, kind=1, secret="s-gone-12"))
    last = await admin.RevokeCredential(pm.RevokeCredentialRequest(credential_id=gone.credential.credential_id))

    messages = await _snapshot(service, pki.tls("access"))

    # One revision for the whole stream: the last write's.
    assert {m.revision for m in messages} == {last.revision}
    pairs = {(p.door_id, p.user_id): p.access for m in messages for p in m.pairs}
    assert set(pairs) == {(door, direct), (door, member)}
    assert [r.grant_id for r in pairs[(door, direct)].rules] == [g_direct.grant.grant_id]
    assert [(r.grant_id, r.via_group_id) for r in pairs[(door, member)].rules] == [
        (g_group.grant.grant_id, group.group_id)]
    assert pairs[(door, direct)].door_time_zone == "UTC"
    creds = {c.credential_id: c for m in messages for c in m.credentials}
    assert set(creds) == {active.credential.credential_id, gone.credential.credential_id}
    assert not creds[active.credential.credential_id].revoked
    assert creds[gone.credential.credential_id].revoked
    assert creds[active.credential.credential_id].kind == ev.CREDENTIAL_KIND_CARD
    assert len(creds[active.credential.credential_id].secret_hash) == 32
    # Pairs come before credentials, never in one message, and the totals match what came.
    assert all(not (m.pairs and m.credentials) for m in messages)
    assert {(m.pairs_total, m.credentials_total) for m in messages} == {(2, 2)}


async def test_snapshot_ignores_writes_committed_while_it_streams(service, admin, pki):
    # Enough members of one group for the pairs to span several messages.
    door = await _door(admin)
    group = (await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=f"g-{uuid.uuid4()}")))).group
    users = await _few_at_a_time([lambda: _user(admin)] * (snapshot.CHUNK + 1))
    await _few_at_a_time([lambda u=u: admin.AddGroupMember(
        pm.AddGroupMemberRequest(group_id=group.group_id, user_id=u)) for u in users])
    grant = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, group_id=group.group_id)))
    last_user = max(users)
    async with aio_channel(service.port, pki.tls("access")) as ch:
        stream = permissions_pb2_grpc.PermissionsServiceStub(ch).ExportAccessSnapshot(
            pm.ExportAccessSnapshotRequest(), timeout=30)
        first = await stream.read()
        # The first message is out: suspend the user whose pair comes last, and issue a credential.
        suspended = await admin.SuspendUser(pm.SuspendUserRequest(user_id=last_user))
        await admin.IssueCredential(pm.IssueCredentialRequest(user_id=users[0], kind=1, secret="s-late-123"))
        messages = [first]
        while (message := await stream.read()) is not grpc.aio.EOF:
            messages.append(message)
    assert suspended.revision > grant.revision
    assert {m.revision for m in messages} == {grant.revision}
    pairs = {p.user_id: p.access for m in messages for p in m.pairs}
    assert len(pairs) == len(users) == first.pairs_total
    # The snapshot still shows the state of its revision: not suspended, no credential.
    assert not pairs[last_user].user_suspended
    assert not [c for m in messages for c in m.credentials]


async def test_a_reader_that_hangs_up_mid_stream_gives_the_connection_back(service, admin, pki):
    # A pair and a credential: two messages, so the reader can leave after the first.
    user, door = await _user(admin), await _door(admin)
    await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, user_id=user)))
    await admin.IssueCredential(pm.IssueCredentialRequest(user_id=user, kind=1, secret="s-hangup-1"))
    pool = service.app.db.engine.pool
    async with aio_channel(service.port, pki.tls("access")) as ch:
        stream = permissions_pb2_grpc.PermissionsServiceStub(ch).ExportAccessSnapshot(
            pm.ExportAccessSnapshotRequest(), timeout=30)
        assert (await stream.read()).pairs
        stream.cancel()

    async def returned() -> bool:
        return pool.checkedout() == 0

    # The server ends the transaction and returns its connection; the next snapshot is served.
    await until(returned, "the snapshot's connection back in the pool")
    assert [m.pairs_total for m in await _snapshot(service, pki.tls("access"))] == [1, 1]
