"""The view rebuild reads the permissions service's snapshot over gRPC, as the access service's identity."""

from __future__ import annotations

import uuid

import grpc
import pytest
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit import secret_hash
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.ports import PairRow, ViewBatch
from services.access.rebuild import rebuild
from tests.integration.conftest import aio_channel


@pytest.fixture
def service(own_permissions):
    return own_permissions


@pytest.fixture
def admin(own_admin):
    return own_admin


@pytest.fixture
async def view(tmp_path):
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    yield view
    await view.close()


@pytest.fixture
async def cache(urls):
    cache = RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5, instance=f"rebuild-{uuid.uuid4().hex[:8]}")
    yield cache
    await cache.close()


def _payload(door: str, user: str) -> bytes:
    return ev.AccessChanged(door_id=door, user_id=user, rules=[ev.AccessRule(grant_id=str(uuid.uuid4()))],
                            door_time_zone="UTC").SerializeToString()


async def _user(admin) -> str:
    return (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="u")))).user.user_id


async def test_rebuild_writes_the_snapshot_closes_stale_pairs_and_keeps_newer_ones(service, admin, view, cache, pki):
    # Permissions: `kept` holds a grant and a card; `gone` held one, revoked since.
    door = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="d", time_zone="UTC")))).door.door_id
    kept, gone, newer = await _user(admin), await _user(admin), await _user(admin)
    grant = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, user_id=kept)))
    old = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=door, user_id=gone)))
    await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=old.grant.grant_id))
    card = await admin.IssueCredential(pm.IssueCredentialRequest(user_id=kept, kind=1, secret="rebuild-card"))
    revision = card.revision
    # The view: `gone` still granted from before the revoke; `newer` granted by an event after the snapshot.
    await view.apply(ViewBatch(pairs=[PairRow(door, gone, old.revision, _payload(door, gone)),
                                      PairRow(door, newer, revision + 100, _payload(door, newer))]))
    seen: list[tuple[int, int]] = []

    async with aio_channel(service.port, pki.tls("access")) as ch:
        result = await rebuild(permissions_pb2_grpc.PermissionsServiceStub(ch), view, cache,
                               lambda done, total: seen.append((done, total)))

    assert result == {"revision": revision, "pairs": 1, "credentials": 1, "tombstoned": 1}
    # The snapshot's pair at its revision, with the grant it carries.
    row = await view.get_pair(door, kept)
    assert row.version == revision
    assert [r.grant_id for r in ev.AccessChanged.FromString(row.payload).rules] == [grant.grant.grant_id]
    # The revoked pair is closed by a tombstone at the snapshot's revision.
    closed = await view.get_pair(door, gone)
    assert (closed.version, closed.payload) == (revision, b"")
    # What the projector applied after the snapshot stays.
    assert (await view.get_pair(door, newer)).version == revision + 100
    # The card resolves by its keyed hash, not revoked.
    digest = secret_hash.hash_secret(service.app.servicer.entitlements.hmac_key, 1, "rebuild-card")
    credential = await view.get_credential(1, digest)
    assert (credential.credential_id, credential.revoked, credential.version) == (
        card.credential.credential_id, False, revision)
    assert await view.watermark() == revision
    assert seen[-1] == (2, 2)


async def test_rebuild_refused_to_another_identity_changes_nothing(service, admin, view, cache, pki):
    door = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="d", time_zone="UTC")))).door.door_id
    user = await _user(admin)
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 1, _payload(door, user))]))

    async with aio_channel(service.port, pki.tls("auditor")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rebuild(permissions_pb2_grpc.PermissionsServiceStub(ch), view, cache)

    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # No snapshot, no tombstone: the pair the view held is still granted.
    assert (await view.get_pair(door, user)).payload
    assert await view.watermark() == 0
