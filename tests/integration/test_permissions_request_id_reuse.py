"""AIP-155 request ids: a retry gets the first answer; the same id with another request is refused."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

C = grpc.StatusCode


def rid() -> str:
    return uuid.uuid4().hex


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            request = error_details_pb2.BadRequest()
            status.details[0].Unpack(request)
            return [v.field for v in request.field_violations]
    return []


async def refused_as_reused(call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == C.INVALID_ARGUMENT, info.value.details()
    assert "request_id" in info.value.details()
    assert bad_fields(info.value) == ["request_id"]


async def test_a_request_id_reused_with_a_different_request_is_invalid_argument(admin):
    # A user is created under a request id.
    request = pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name="Ada", email="ada@example.org"))
    first = await admin.CreateUser(request)

    # The same id with another body is refused, not answered with the first user...
    await refused_as_reused(admin.CreateUser(pm.CreateUserRequest(
        request_id=request.request_id, user=pm.User(display_name="Grace", email="ada@example.org"))))
    # ...a field added is a different request too...
    await refused_as_reused(admin.CreateUser(pm.CreateUserRequest(
        request_id=request.request_id, user=pm.User(display_name="Ada", email="ada@example.org",
                                                    external_id=rid()))))
    # ...and nothing was written: no user named Grace exists.
    listed = await admin.ListUsers(pm.ListUsersRequest(page_size=500))
    assert "Grace" not in {u.display_name for u in listed.users}

    # The same body again is a retry: the first answer, unchanged.
    assert await admin.CreateUser(request) == first


async def test_every_create_checks_its_whole_request(admin):
    # Each write that takes a request_id, retried once as it was and once changed.
    user = (await admin.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name="U")))).user
    door = (await admin.CreateDoor(pm.CreateDoorRequest(
        request_id=rid(), door=pm.Door(name="D", time_zone="Europe/Madrid")))).door
    secret = rid()[:12]
    pairs = [
        (admin.CreateDoor, pm.CreateDoorRequest(request_id=rid(), door=pm.Door(name="Lab", time_zone="UTC")),
         lambda r: r.door.__setattr__("name", "Lobby")),
        (admin.CreateGroup, pm.CreateGroupRequest(request_id=rid(), group=pm.Group(name=rid())),
         lambda r: r.group.__setattr__("name", rid())),
        (admin.CreateSchedule, pm.CreateScheduleRequest(request_id=rid(), schedule=pm.Schedule(
            name="Office", windows=[ev.ScheduleWindow(day_of_week=1, start_minute=480, end_minute=1080)])),
         lambda r: r.schedule.windows[0].__setattr__("end_minute", 1020)),
        (admin.IssueCredential, pm.IssueCredentialRequest(request_id=rid(), user_id=user.user_id,
                                                          kind=ev.CREDENTIAL_KIND_CARD, secret=secret),
         lambda r: r.__setattr__("label", "lost and found")),
        (admin.GrantAccess, pm.GrantAccessRequest(request_id=rid(), grant=pm.Grant(
            user_id=user.user_id, door_id=door.door_id)),
         lambda r: r.grant.valid_until.FromSeconds(4_000_000_000)),
    ]
    for method, request, change in pairs:
        first = await method(request)
        assert await method(request) == first, type(request).__name__
        changed = type(request)()
        changed.CopyFrom(request)
        change(changed)
        await refused_as_reused(method(changed))
