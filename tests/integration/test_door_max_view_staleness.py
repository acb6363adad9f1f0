"""A door's fail-closed bound (`max_view_staleness`): set on create and by update mask, checked, read back."""

from __future__ import annotations

import uuid

import grpc
import nats
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from latchkey.permissions.v1 import permissions_pb2 as pm
from nats.js.errors import NotFoundError

from latchkit import envelope
from latchkit.bus import PERMISSIONS_STREAM, PERMISSIONS_SUBJECT_PREFIX
from tests.integration.test_permissions_api import bad_field, fails, outbox_count
from tests.waiting import until

C = grpc.StatusCode
FIELD = "door.max_view_staleness"


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def create(admin, **door):
    return admin.CreateDoor(pm.CreateDoorRequest(request_id=uuid.uuid4().hex,
                                                 door=pm.Door(name="Vault", time_zone="UTC", **door)))


def update(admin, door_id: str, value: duration_pb2.Duration):
    return admin.UpdateDoor(pm.UpdateDoorRequest(
        door=pm.Door(door_id=door_id, max_view_staleness=value),
        update_mask=field_mask_pb2.FieldMask(paths=["max_view_staleness"])))


async def test_set_on_create_changed_and_turned_off_by_update(admin):
    # 1. Created fail-closed at 1.5 s: the answer and a later read say so.
    door = (await create(admin, max_view_staleness=seconds(1.5))).door
    assert door.max_view_staleness.ToMilliseconds() == 1500
    got = (await admin.GetDoor(pm.GetDoorRequest(door_id=door.door_id))).door
    assert got.max_view_staleness.ToMilliseconds() == 1500
    # 2. Raised to the largest bound by mask; the other fields stay as they were.
    raised = (await update(admin, door.door_id, seconds(3600))).door
    assert (raised.max_view_staleness.ToSeconds(), raised.name, raised.time_zone) == (3600, "Vault", "UTC")
    # 3. Zero turns it off (the field is then unset).
    off = (await update(admin, door.door_id, duration_pb2.Duration())).door
    assert not off.HasField("max_view_staleness")
    # 4. A door created without it is not fail-closed.
    plain = (await create(admin)).door
    assert not plain.HasField("max_view_staleness")


@pytest.mark.parametrize("value", [0.5, 0.999, 3600.001, -1, 1.0005])
async def test_out_of_range_is_refused_naming_the_field_and_writes_nothing(admin, permissions, value):
    door = (await create(admin)).door
    before = await outbox_count(permissions)
    # Outside 1 s..1 h, negative, or finer than a millisecond: refused on create and on update.
    for call in (create(admin, max_view_staleness=seconds(value)), update(admin, door.door_id, seconds(value))):
        err = await fails(call, C.INVALID_ARGUMENT)
        assert bad_field(err) == FIELD, err.details()
    assert await outbox_count(permissions) == before
    assert not (await admin.GetDoor(pm.GetDoorRequest(door_id=door.door_id))).door.HasField("max_view_staleness")


async def test_an_update_reaches_access_in_the_pairs_and_the_door_event(admin, urls):
    # 1. A user with a grant at a door that is not fail-closed.
    door = (await create(admin)).door
    user = (await admin.CreateUser(pm.CreateUserRequest(request_id=uuid.uuid4().hex,
                                                        user=pm.User(display_name="Ada")))).user
    await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id, door_id=door.door_id)))
    # 2. The door is made fail-closed at 2 s.
    revision = (await update(admin, door.door_id, seconds(2))).revision
    # 3. The same revision carries the bound to access: in the pair's AccessChanged (what Unlock
    #    decides from) and in the DoorChanged.
    nc = await nats.connect(urls.nats_url)
    try:
        js = nc.jetstream()

        async def last(kind: str):
            try:
                msg = await js.get_last_msg(PERMISSIONS_STREAM, PERMISSIONS_SUBJECT_PREFIX + kind)
            except NotFoundError:
                return None
            env = envelope.parse(msg.data)
            return getattr(env, kind) if env.revision == revision else None

        async def relayed() -> bool:
            return await last("access_changed") is not None and await last("door_changed") is not None

        await until(relayed, f"revision {revision} on the stream")
        pair, changed = await last("access_changed"), await last("door_changed")
        assert (pair.door_id, pair.user_id) == (door.door_id, user.user_id)
        assert pair.door_max_view_staleness.ToMilliseconds() == 2000
        assert changed.max_view_staleness.ToMilliseconds() == 2000
    finally:
        await nc.close()
