"""Every PermissionsService RPC against real PostgreSQL: answers, precise statuses, no partial writes."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

C = grpc.StatusCode


def rid() -> str:
    return uuid.uuid4().hex


def bad_field(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            request = error_details_pb2.BadRequest()
            status.details[0].Unpack(request)
            return request.field_violations[0].field
    raise AssertionError("no BadRequest detail")


async def fails(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def user(admin, name="Ada"):
    return (await admin.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name=name)))).user


async def door(admin, zone="Europe/Madrid"):
    return (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="Lab", time_zone=zone)))).door


async def outbox_count(permissions) -> int:
    async with permissions.app.db.read() as uow:
        return (await uow.row("SELECT revision FROM revision_counter"))["revision"]


async def test_users_lifecycle(admin):
    # Create, read, list, update by mask, suspend, reactivate, delete.
    created = await admin.CreateUser(pm.CreateUserRequest(
        request_id=rid(), user=pm.User(display_name="Grace", email="g@example.org", external_id=rid())))
    u = created.user
    assert u.state == ev.USER_STATE_ACTIVE and created.revision > 0
    assert (await admin.GetUser(pm.GetUserRequest(user_id=u.user_id))).user == u
    updated = await admin.UpdateUser(pm.UpdateUserRequest(
        user=pm.User(user_id=u.user_id, display_name="Grace H.", email="ignored"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
    assert (updated.user.display_name, updated.user.email) == ("Grace H.", "g@example.org")
    assert updated.revision > created.revision
    suspended = await admin.SuspendUser(pm.SuspendUserRequest(user_id=u.user_id))
    assert suspended.user.state == ev.USER_STATE_SUSPENDED
    listed = await admin.ListUsers(pm.ListUsersRequest(state=ev.USER_STATE_SUSPENDED, page_size=500))
    assert u.user_id in {x.user_id for x in listed.users}
    again = await admin.ReactivateUser(pm.ReactivateUserRequest(user_id=u.user_id))
    assert again.user.state == ev.USER_STATE_ACTIVE
    await admin.DeleteUser(pm.DeleteUserRequest(user_id=u.user_id))
    await fails(admin.GetUser(pm.GetUserRequest(user_id=u.user_id)), C.NOT_FOUND)


async def test_create_is_idempotent_by_request_id(admin, permissions):
    request = pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name="Once"))
    first = await admin.CreateUser(request)
    before = await outbox_count(permissions)
    second = await admin.CreateUser(request)
    # Same user, same revision, and no new revision was consumed.
    assert second == first
    assert await outbox_count(permissions) == before
    # The same request_id for another method is refused, not silently replayed.
    err = await fails(admin.CreateGroup(pm.CreateGroupRequest(request_id=request.request_id,
                                                              group=pm.Group(name=rid()))), C.ALREADY_EXISTS)
    assert "CreateUser" in err.details()


async def test_bad_input_names_the_field_and_writes_nothing(admin, permissions):
    before = await outbox_count(permissions)
    cases = [
        (admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name=""))), "user.display_name"),
        (admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="x" * 201))), "user.display_name"),
        (admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="D", time_zone="Mars/Olympus"))),
         "door.time_zone"),
        (admin.GetUser(pm.GetUserRequest(user_id="not-a-uuid")), "user_id"),
        (admin.ListUsers(pm.ListUsersRequest(page_token="forged")), "page_token"),
        (admin.ListUsers(pm.ListUsersRequest(page_size=-1)), "page_size"),
        (admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="s", windows=[
            ev.ScheduleWindow(day_of_week=1, start_minute=600, end_minute=500)]))), "schedule.windows[0].end_minute"),
        (admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="s", windows=[
            ev.ScheduleWindow(day_of_week=1, start_minute=0, end_minute=600),
            ev.ScheduleWindow(day_of_week=1, start_minute=500, end_minute=700)]))), "schedule.windows"),
        (admin.IssueCredential(pm.IssueCredentialRequest(user_id=str(uuid.uuid4()), kind=ev.CREDENTIAL_KIND_PIN,
                                                         secret="12ab")), "secret"),
        (admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(door_id=str(uuid.uuid4())))), "grant.user_id"),
        (admin.UpdateUser(pm.UpdateUserRequest(user=pm.User(user_id=str(uuid.uuid4())),
                                               update_mask=field_mask_pb2.FieldMask(paths=["state"]))),
         "update_mask"),
    ]
    for call, field in cases:
        err = await fails(call, C.INVALID_ARGUMENT)
        assert bad_field(err) == field, err.details()
        assert "12ab" not in err.details()  # a secret is never echoed
    assert await outbox_count(permissions) == before


async def test_grant_validity_window_is_checked(admin):
    u, d = await user(admin), await door(admin)
    g = pm.Grant(user_id=u.user_id, door_id=d.door_id)
    g.valid_from.FromDatetime(dt.datetime(2030, 1, 2, tzinfo=dt.UTC))
    g.valid_until.FromDatetime(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    err = await fails(admin.GrantAccess(pm.GrantAccessRequest(grant=g)), C.INVALID_ARGUMENT)
    assert bad_field(err) == "grant.valid_until"


async def test_a_grant_to_something_missing_names_it_and_writes_nothing(admin, permissions):
    u, d = await user(admin), await door(admin)
    group = (await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name="g")))).group
    missing = str(uuid.uuid4())
    cases = {
        "user_id": pm.Grant(user_id=missing, door_id=d.door_id),
        "group_id": pm.Grant(group_id=missing, door_id=d.door_id),
        "door_id": pm.Grant(user_id=u.user_id, door_id=missing),
        "schedule_id": pm.Grant(group_id=group.group_id, door_id=d.door_id, schedule_id=missing),
    }
    before = await outbox_count(permissions)
    for field, grant in cases.items():
        err = await fails(admin.GrantAccess(pm.GrantAccessRequest(grant=grant)), C.NOT_FOUND)
        assert err.details() == f"grant.{field} {missing} not found"
    assert await outbox_count(permissions) == before
    # The connection each failure used is clean: the next write works.
    assert (await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(
        user_id=u.user_id, door_id=d.door_id)))).revision == before + 1


async def test_not_found_and_already_exists(admin):
    missing = str(uuid.uuid4())
    await fails(admin.GetDoor(pm.GetDoorRequest(door_id=missing)), C.NOT_FOUND)
    await fails(admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=missing, door_id=missing))),
                C.NOT_FOUND)
    await fails(admin.AddGroupMember(pm.AddGroupMemberRequest(group_id=missing, user_id=missing)), C.NOT_FOUND)
    name = rid()
    await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=name)))
    await fails(admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=name))), C.ALREADY_EXISTS)
    u = await user(admin)
    secret = rid()
    await admin.IssueCredential(pm.IssueCredentialRequest(user_id=u.user_id, kind=ev.CREDENTIAL_KIND_MOBILE,
                                                          secret=secret))
    err = await fails(admin.IssueCredential(pm.IssueCredentialRequest(
        user_id=u.user_id, kind=ev.CREDENTIAL_KIND_MOBILE, secret=secret)), C.ALREADY_EXISTS)
    assert secret not in err.details()


async def test_doors_groups_schedules_credentials_grants(admin):
    u, d = await user(admin), await door(admin)
    # Doors: update the time zone by mask, lockdown on and off, list by site.
    moved = await admin.UpdateDoor(pm.UpdateDoorRequest(
        door=pm.Door(door_id=d.door_id, time_zone="America/New_York", site="HQ"),
        update_mask=field_mask_pb2.FieldMask(paths=["time_zone", "site"])))
    assert (moved.door.time_zone, moved.door.site) == ("America/New_York", "HQ")
    assert (await admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=d.door_id, lockdown=True))).door.lockdown
    listed = await admin.ListDoors(pm.ListDoorsRequest(site="HQ"))
    assert [x.door_id for x in listed.doors] == [d.door_id]
    await admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=d.door_id, lockdown=False))
    # Groups and membership (adding twice is a no-op with the current revision).
    g = (await admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=rid())))).group
    added = await admin.AddGroupMember(pm.AddGroupMemberRequest(group_id=g.group_id, user_id=u.user_id))
    again = await admin.AddGroupMember(pm.AddGroupMemberRequest(group_id=g.group_id, user_id=u.user_id))
    assert again.revision >= added.revision
    members = await admin.ListGroupMembers(pm.ListGroupMembersRequest(group_id=g.group_id))
    assert [m.user_id for m in members.members] == [u.user_id]
    renamed = await admin.UpdateGroup(pm.UpdateGroupRequest(group=pm.Group(group_id=g.group_id, name=rid())))
    assert (await admin.GetGroup(pm.GetGroupRequest(group_id=g.group_id))).group.name == renamed.group.name
    # Schedules: a group grant with a schedule; the schedule cannot go while the grant is active.
    s = (await admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="office", windows=[
        ev.ScheduleWindow(day_of_week=d, start_minute=480, end_minute=1080) for d in range(1, 6)])))).schedule
    assert len((await admin.GetSchedule(pm.GetScheduleRequest(schedule_id=s.schedule_id))).schedule.windows) == 5
    grant = (await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(
        group_id=g.group_id, door_id=d.door_id, schedule_id=s.schedule_id)))).grant
    await fails(admin.DeleteSchedule(pm.DeleteScheduleRequest(schedule_id=s.schedule_id)), C.FAILED_PRECONDITION)
    by_door = await admin.ListGrants(pm.ListGrantsRequest(door_id=d.door_id))
    assert [x.grant_id for x in by_door.grants] == [grant.grant_id]
    assert (await admin.GetGrant(pm.GetGrantRequest(grant_id=grant.grant_id))).grant.group_id == g.group_id
    await admin.UpdateSchedule(pm.UpdateScheduleRequest(
        schedule=pm.Schedule(schedule_id=s.schedule_id, windows=[ev.ScheduleWindow(
            day_of_week=7, start_minute=0, end_minute=1440)]),
        update_mask=field_mask_pb2.FieldMask(paths=["windows"])))
    await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=grant.grant_id))
    await fails(admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=grant.grant_id)), C.FAILED_PRECONDITION)
    assert not (await admin.ListGrants(pm.ListGrantsRequest(door_id=d.door_id))).grants
    assert (await admin.ListGrants(pm.ListGrantsRequest(door_id=d.door_id, include_revoked=True))).grants
    await admin.DeleteSchedule(pm.DeleteScheduleRequest(schedule_id=s.schedule_id))
    await admin.RemoveGroupMember(pm.RemoveGroupMemberRequest(group_id=g.group_id, user_id=u.user_id))
    await fails(admin.RemoveGroupMember(pm.RemoveGroupMemberRequest(group_id=g.group_id, user_id=u.user_id)),
                C.NOT_FOUND)
    await admin.DeleteGroup(pm.DeleteGroupRequest(group_id=g.group_id))
    # Credentials never carry a secret; revoking twice is refused.
    cred = (await admin.IssueCredential(pm.IssueCredentialRequest(
        user_id=u.user_id, kind=ev.CREDENTIAL_KIND_PIN, secret="482913", label="desk"))).credential
    assert "482913" not in str(cred)
    assert (await admin.ListCredentials(pm.ListCredentialsRequest(user_id=u.user_id))).credentials == [cred]
    revoked = await admin.RevokeCredential(pm.RevokeCredentialRequest(credential_id=cred.credential_id))
    assert revoked.credential.state == ev.CREDENTIAL_STATE_REVOKED
    await fails(admin.RevokeCredential(pm.RevokeCredentialRequest(credential_id=cred.credential_id)),
                C.FAILED_PRECONDITION)
    assert (await admin.GetCredential(pm.GetCredentialRequest(
        credential_id=cred.credential_id))).credential.state == ev.CREDENTIAL_STATE_REVOKED
    await admin.DeleteDoor(pm.DeleteDoorRequest(door_id=d.door_id))
    assert not (await admin.ListGrants(pm.ListGrantsRequest(door_id=d.door_id, include_revoked=True))).grants


async def test_pagination_walks_every_item_once(admin):
    site = rid()
    ids = set()
    for _ in range(7):
        ids.add((await admin.CreateDoor(pm.CreateDoorRequest(
            door=pm.Door(name="P", site=site, time_zone="UTC")))).door.door_id)
    seen, token = [], ""
    while True:
        page = await admin.ListDoors(pm.ListDoorsRequest(site=site, page_size=3, page_token=token))
        seen += [x.door_id for x in page.doors]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)


async def test_explain_access_gives_reason_and_grants(admin):
    u, d = await user(admin), await door(admin, "UTC")
    no = await admin.ExplainAccess(pm.ExplainAccessRequest(user_id=u.user_id, door_id=d.door_id))
    assert (no.decision, no.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT)
    g = pm.Grant(user_id=u.user_id, door_id=d.door_id)
    g.valid_from.FromDatetime(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    granted = await admin.GrantAccess(pm.GrantAccessRequest(grant=g))
    at = pm.ExplainAccessRequest(user_id=u.user_id, door_id=d.door_id)
    early = await admin.ExplainAccess(at)
    assert (early.reason, early.revision) == (ev.DECISION_REASON_NOT_YET_VALID, granted.revision)
    at.at.FromDatetime(dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
    later = await admin.ExplainAccess(at)
    assert later.decision == ev.DECISION_GRANTED
    assert [x.grant_id for x in later.grants] == [granted.grant.grant_id]
    await admin.SuspendUser(pm.SuspendUserRequest(user_id=u.user_id))
    assert (await admin.ExplainAccess(at)).reason == ev.DECISION_REASON_USER_SUSPENDED
