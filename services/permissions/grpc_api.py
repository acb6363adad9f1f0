"""PermissionsService servicer: protobuf in, a use case, protobuf out; errors become statuses.

Each handler validates its request into plain values (`validation`), calls one
use case, and maps the typed rows it returns to messages. No SQL, no
transactions here: the use cases own their units of work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.message import Message
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit import timestamps
from latchkit.errors import InvalidArgument, handles_errors
from latchkit.identity import actor
from services.permissions import validation
from services.permissions.directory import Directory, NewUser
from services.permissions.domain import Credential, Door, Grant, Group, Schedule, User
from services.permissions.entitlements import Entitlements, NewGrant
from services.permissions.service import Idempotent, Replayed, Written
from services.permissions.snapshot import AccessSnapshot

# The rows keep enums as ints (validated on the way in); the casts below only tell mypy so.
Context: TypeAlias = grpc.aio.ServicerContext
R = TypeVar("R", bound=Message)
T = TypeVar("T")


def ts(value: dt.datetime | None, target) -> None:
    if value is not None:
        target.FromDatetime(value)


def user_pb(r: User) -> pm.User:
    m = pm.User(user_id=r.user_id, display_name=r.display_name, email=r.email, external_id=r.external_id,
                state=ev.USER_STATE_SUSPENDED if r.suspended else ev.USER_STATE_ACTIVE)
    ts(r.create_time, m.create_time)
    ts(r.update_time, m.update_time)
    return m


def door_pb(r: Door) -> pm.Door:
    m = pm.Door(door_id=r.door_id, name=r.name, site=r.site, time_zone=r.time_zone, lockdown=r.lockdown)
    if r.max_view_staleness_ms:
        m.max_view_staleness.FromMilliseconds(r.max_view_staleness_ms)
    ts(r.create_time, m.create_time)
    ts(r.update_time, m.update_time)
    return m


def group_pb(r: Group) -> pm.Group:
    m = pm.Group(group_id=r.group_id, name=r.name)
    ts(r.create_time, m.create_time)
    ts(r.update_time, m.update_time)
    return m


def schedule_pb(r: Schedule) -> pm.Schedule:
    m = pm.Schedule(schedule_id=r.schedule_id, name=r.name, windows=[
        ev.ScheduleWindow(day_of_week=cast(ev.DayOfWeek, w.day), start_minute=w.start_minute,
                          end_minute=w.end_minute)
        for w in r.windows])
    ts(r.create_time, m.create_time)
    ts(r.update_time, m.update_time)
    return m


def credential_pb(r: Credential) -> pm.Credential:
    m = pm.Credential(credential_id=r.credential_id, user_id=r.user_id, kind=cast(ev.CredentialKind, r.kind),
                      label=r.label,
                      state=ev.CREDENTIAL_STATE_REVOKED if r.revoked else ev.CREDENTIAL_STATE_ACTIVE)
    ts(r.create_time, m.create_time)
    ts(r.revoke_time, m.revoke_time)
    return m


def grant_pb(r: Grant) -> pm.Grant:
    m = pm.Grant(grant_id=r.grant_id, door_id=r.door_id, schedule_id=r.schedule_id, revoked=r.revoked)
    if r.user_id:
        m.user_id = r.user_id
    else:
        m.group_id = r.group_id
    for key in ("valid_from", "valid_until", "create_time", "revoke_time"):
        ts(getattr(r, key), getattr(m, key))
    return m


def timestamp_in(message, field: str, name: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    if not timestamps.is_valid(value):
        raise InvalidArgument(name, "is not a valid timestamp")
    return value.ToDatetime(tzinfo=dt.UTC)


def mask_paths(request, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """An empty mask updates every updatable field; an unknown path is INVALID_ARGUMENT."""
    paths = tuple(request.update_mask.paths) or allowed
    for path in paths:
        if path not in allowed:
            raise InvalidArgument("update_mask", f"{path[:80]!r} is not updatable (allowed: {', '.join(allowed)})")
    return paths


def new_user(u: pm.User, prefix: str = "") -> NewUser:
    """CreateUser's fields; `prefix` names the item of a batch (`requests[3].`)."""
    return NewUser(validation.text(u.display_name, f"{prefix}user.display_name", max_len=200, required=True),
                   validation.text(u.email, f"{prefix}user.email", max_len=320, required=False),
                   validation.text(u.external_id, f"{prefix}user.external_id", max_len=200, required=False))


def new_grant(g: pm.Grant, prefix: str = "") -> NewGrant:
    """GrantAccess's fields; `prefix` names the item of a batch (`requests[3].`)."""
    subject = g.WhichOneof("subject")
    if subject is None:
        raise InvalidArgument(f"{prefix}grant.user_id", "a grant needs a user_id or a group_id")
    user_id = validation.uuid_str(g.user_id, f"{prefix}grant.user_id") if subject == "user_id" else ""
    group_id = validation.uuid_str(g.group_id, f"{prefix}grant.group_id") if subject == "group_id" else ""
    door_id = validation.uuid_str(g.door_id, f"{prefix}grant.door_id")
    schedule_id = validation.uuid_str(g.schedule_id, f"{prefix}grant.schedule_id", required=False)
    valid_from = timestamp_in(g, "valid_from", f"{prefix}grant.valid_from")
    valid_until = timestamp_in(g, "valid_until", f"{prefix}grant.valid_until")
    if valid_from and valid_until and valid_until <= valid_from:
        raise InvalidArgument(f"{prefix}grant.valid_until", "must be after valid_from")
    return NewGrant(user_id, group_id, door_id, valid_from, valid_until, schedule_id)


def batch_items(items: Sequence[T]) -> Iterator[tuple[str, T]]:
    """A batch's items with the prefix that names each (`requests[3].`): 1 to 1,000 of them, none with a
    request_id of its own (the batch's request_id covers them all)."""
    validation.batch_size(items, "requests")
    for i, item in enumerate(items):
        prefix = f"requests[{i}]."
        validation.item_request_id(cast(Any, item).request_id, f"{prefix}request_id")
        yield prefix, item


def respond(outcome: Written[T] | Replayed, build: Callable[[T, int], R], response_type: type[R]) -> R:
    """The response of a write: built from the use case's result, or a retry's stored answer."""
    if isinstance(outcome, Replayed):
        return response_type.FromString(outcome.response)
    return build(outcome.value, outcome.revision)


def idempotent(method: str, request, build: Callable[[T, int], Message]) -> Idempotent | None:
    """A create's request_id, if it has one: a retry then gets the first answer back."""
    request_id = validation.request_id(request.request_id)
    if not request_id:
        return None
    return Idempotent(caller=actor(), request_id=request_id, method=method,
                      request=request.SerializeToString(deterministic=True),
                      encode=lambda value, revision: build(value, revision).SerializeToString())


class PermissionsServicer(permissions_pb2_grpc.PermissionsServiceServicer):
    def __init__(self, directory: Directory, entitlements: Entitlements, snapshot: AccessSnapshot) -> None:
        self.directory = directory
        self.entitlements = entitlements
        self.snapshot = snapshot

    # ---- users -----------------------------------------------------------------
    @handles_errors
    async def CreateUser(self, request: pm.CreateUserRequest, context: Context) -> pm.CreateUserResponse:
        new = new_user(request.user)

        def build(row: User, revision: int) -> pm.CreateUserResponse:
            return pm.CreateUserResponse(user=user_pb(row), revision=revision)
        outcome = await self.directory.create_user(new.display_name, new.email, new.external_id,
                                                   idempotent("CreateUser", request, build))
        return respond(outcome, build, pm.CreateUserResponse)

    @handles_errors
    async def BatchCreateUsers(self, request: pm.BatchCreateUsersRequest,
                               context: Context) -> pm.BatchCreateUsersResponse:
        new = [new_user(item.user, prefix) for prefix, item in batch_items(request.requests)]

        def build(rows: list[User], revision: int) -> pm.BatchCreateUsersResponse:
            return pm.BatchCreateUsersResponse(users=[user_pb(r) for r in rows], revision=revision)
        outcome = await self.directory.create_users(new, idempotent("BatchCreateUsers", request, build))
        return respond(outcome, build, pm.BatchCreateUsersResponse)

    @handles_errors
    async def GetUser(self, request: pm.GetUserRequest, context: Context) -> pm.GetUserResponse:
        user_id = validation.uuid_str(request.user_id, "user_id")
        return pm.GetUserResponse(user=user_pb(await self.directory.get_user(user_id)))

    @handles_errors
    async def ListUsers(self, request: pm.ListUsersRequest, context: Context) -> pm.ListUsersResponse:
        size = validation.page_size(request.page_size)
        if request.state not in (ev.USER_STATE_UNSPECIFIED, ev.USER_STATE_ACTIVE, ev.USER_STATE_SUSPENDED):
            raise InvalidArgument("state", "unknown user state")
        suspended = None if not request.state else request.state == ev.USER_STATE_SUSPENDED
        page = await self.directory.list_users(size, request.page_token, suspended)
        return pm.ListUsersResponse(users=[user_pb(r) for r in page.items], next_page_token=page.next_page_token)

    @handles_errors
    async def UpdateUser(self, request: pm.UpdateUserRequest, context: Context) -> pm.UpdateUserResponse:
        user_id = validation.uuid_str(request.user.user_id, "user.user_id")
        changes = {}
        for path in mask_paths(request, ("display_name", "email", "external_id")):
            limit, required = {"display_name": (200, True), "email": (320, False), "external_id": (200, False)}[path]
            changes[path] = validation.text(getattr(request.user, path), f"user.{path}", max_len=limit,
                                            required=required)
        written = await self.directory.update_user(user_id, changes)
        return pm.UpdateUserResponse(user=user_pb(written.value), revision=written.revision)

    @handles_errors
    async def DeleteUser(self, request: pm.DeleteUserRequest, context: Context) -> pm.DeleteUserResponse:
        user_id = validation.uuid_str(request.user_id, "user_id")
        return pm.DeleteUserResponse(revision=(await self.directory.delete_user(user_id)).revision)

    @handles_errors
    async def SuspendUser(self, request: pm.SuspendUserRequest, context: Context) -> pm.SuspendUserResponse:
        written = await self.directory.set_suspended(validation.uuid_str(request.user_id, "user_id"), True)
        return pm.SuspendUserResponse(user=user_pb(written.value), revision=written.revision)

    @handles_errors
    async def ReactivateUser(self, request: pm.ReactivateUserRequest,
                             context: Context) -> pm.ReactivateUserResponse:
        written = await self.directory.set_suspended(validation.uuid_str(request.user_id, "user_id"), False)
        return pm.ReactivateUserResponse(user=user_pb(written.value), revision=written.revision)

    # ---- doors -----------------------------------------------------------------
    @handles_errors
    async def CreateDoor(self, request: pm.CreateDoorRequest, context: Context) -> pm.CreateDoorResponse:
        d = request.door
        name = validation.text(d.name, "door.name", max_len=200, required=True)
        site = validation.text(d.site, "door.site", max_len=200, required=False)
        zone = validation.time_zone(d.time_zone, "door.time_zone")
        staleness = validation.max_view_staleness_ms(d.max_view_staleness, "door.max_view_staleness")

        def build(row: Door, revision: int) -> pm.CreateDoorResponse:
            return pm.CreateDoorResponse(door=door_pb(row), revision=revision)
        outcome = await self.directory.create_door(name, site, zone, d.lockdown, staleness,
                                                   idempotent("CreateDoor", request, build))
        return respond(outcome, build, pm.CreateDoorResponse)

    @handles_errors
    async def GetDoor(self, request: pm.GetDoorRequest, context: Context) -> pm.GetDoorResponse:
        door_id = validation.uuid_str(request.door_id, "door_id")
        return pm.GetDoorResponse(door=door_pb(await self.directory.get_door(door_id)))

    @handles_errors
    async def ListDoors(self, request: pm.ListDoorsRequest, context: Context) -> pm.ListDoorsResponse:
        size = validation.page_size(request.page_size)
        site = validation.text(request.site, "site", max_len=200, required=False)
        page = await self.directory.list_doors(size, request.page_token, site)
        return pm.ListDoorsResponse(doors=[door_pb(r) for r in page.items], next_page_token=page.next_page_token)

    @handles_errors
    async def UpdateDoor(self, request: pm.UpdateDoorRequest, context: Context) -> pm.UpdateDoorResponse:
        door_id = validation.uuid_str(request.door.door_id, "door.door_id")
        changes: dict[str, Any] = {}
        for path in mask_paths(request, ("name", "site", "time_zone", "max_view_staleness")):
            value = getattr(request.door, path)
            if path == "time_zone":
                changes[path] = validation.time_zone(value, "door.time_zone")
            elif path == "max_view_staleness":
                changes["max_view_staleness_ms"] = validation.max_view_staleness_ms(value, "door.max_view_staleness")
            else:
                changes[path] = validation.text(value, f"door.{path}", max_len=200, required=path == "name")
        written = await self.directory.update_door(door_id, changes)
        return pm.UpdateDoorResponse(door=door_pb(written.value), revision=written.revision)

    @handles_errors
    async def DeleteDoor(self, request: pm.DeleteDoorRequest, context: Context) -> pm.DeleteDoorResponse:
        door_id = validation.uuid_str(request.door_id, "door_id")
        return pm.DeleteDoorResponse(revision=(await self.directory.delete_door(door_id)).revision)

    @handles_errors
    async def SetDoorLockdown(self, request: pm.SetDoorLockdownRequest,
                              context: Context) -> pm.SetDoorLockdownResponse:
        door_id = validation.uuid_str(request.door_id, "door_id")
        written = await self.directory.set_lockdown(door_id, request.lockdown)
        return pm.SetDoorLockdownResponse(door=door_pb(written.value), revision=written.revision)

    # ---- groups ----------------------------------------------------------------
    @handles_errors
    async def CreateGroup(self, request: pm.CreateGroupRequest, context: Context) -> pm.CreateGroupResponse:
        name = validation.text(request.group.name, "group.name", max_len=200, required=True)

        def build(row: Group, revision: int) -> pm.CreateGroupResponse:
            return pm.CreateGroupResponse(group=group_pb(row), revision=revision)
        outcome = await self.directory.create_group(name, idempotent("CreateGroup", request, build))
        return respond(outcome, build, pm.CreateGroupResponse)

    @handles_errors
    async def GetGroup(self, request: pm.GetGroupRequest, context: Context) -> pm.GetGroupResponse:
        group_id = validation.uuid_str(request.group_id, "group_id")
        return pm.GetGroupResponse(group=group_pb(await self.directory.get_group(group_id)))

    @handles_errors
    async def ListGroups(self, request: pm.ListGroupsRequest, context: Context) -> pm.ListGroupsResponse:
        size = validation.page_size(request.page_size)
        page = await self.directory.list_groups(size, request.page_token)
        return pm.ListGroupsResponse(groups=[group_pb(r) for r in page.items], next_page_token=page.next_page_token)

    @handles_errors
    async def UpdateGroup(self, request: pm.UpdateGroupRequest, context: Context) -> pm.UpdateGroupResponse:
        group_id = validation.uuid_str(request.group.group_id, "group.group_id")
        name = None
        if "name" in mask_paths(request, ("name",)):
            name = validation.text(request.group.name, "group.name", max_len=200, required=True)
        written = await self.directory.update_group(group_id, name)
        return pm.UpdateGroupResponse(group=group_pb(written.value), revision=written.revision)

    @handles_errors
    async def DeleteGroup(self, request: pm.DeleteGroupRequest, context: Context) -> pm.DeleteGroupResponse:
        group_id = validation.uuid_str(request.group_id, "group_id")
        return pm.DeleteGroupResponse(revision=(await self.directory.delete_group(group_id)).revision)

    async def _member(self, request: pm.AddGroupMemberRequest | pm.RemoveGroupMemberRequest, member: bool) -> int:
        group_id = validation.uuid_str(request.group_id, "group_id")
        user_id = validation.uuid_str(request.user_id, "user_id")
        return (await self.directory.set_member(group_id, user_id, member)).revision

    async def _members(self, request: pm.BatchAddGroupMembersRequest | pm.BatchRemoveGroupMembersRequest,
                       member: bool, method: str) -> Written[None] | Replayed:
        group_id = validation.uuid_str(request.group_id, "group_id")
        user_ids = validation.distinct_ids(request.user_ids, "user_ids")
        response = pm.BatchAddGroupMembersResponse if member else pm.BatchRemoveGroupMembersResponse
        return await self.directory.set_members(group_id, user_ids, member, idempotent(
            method, request, lambda _, revision: response(revision=revision)))

    @handles_errors
    async def BatchAddGroupMembers(self, request: pm.BatchAddGroupMembersRequest,
                                   context: Context) -> pm.BatchAddGroupMembersResponse:
        outcome = await self._members(request, True, "BatchAddGroupMembers")
        return respond(outcome, lambda _, revision: pm.BatchAddGroupMembersResponse(revision=revision),
                       pm.BatchAddGroupMembersResponse)

    @handles_errors
    async def BatchRemoveGroupMembers(self, request: pm.BatchRemoveGroupMembersRequest,
                                      context: Context) -> pm.BatchRemoveGroupMembersResponse:
        outcome = await self._members(request, False, "BatchRemoveGroupMembers")
        return respond(outcome, lambda _, revision: pm.BatchRemoveGroupMembersResponse(revision=revision),
                       pm.BatchRemoveGroupMembersResponse)

    @handles_errors
    async def AddGroupMember(self, request: pm.AddGroupMemberRequest, context: Context) -> pm.AddGroupMemberResponse:
        return pm.AddGroupMemberResponse(revision=await self._member(request, True))

    @handles_errors
    async def RemoveGroupMember(self, request: pm.RemoveGroupMemberRequest,
                                context: Context) -> pm.RemoveGroupMemberResponse:
        return pm.RemoveGroupMemberResponse(revision=await self._member(request, False))

    @handles_errors
    async def ListGroupMembers(self, request: pm.ListGroupMembersRequest,
                               context: Context) -> pm.ListGroupMembersResponse:
        group_id = validation.uuid_str(request.group_id, "group_id")
        size = validation.page_size(request.page_size)
        page = await self.directory.list_members(group_id, size, request.page_token)
        return pm.ListGroupMembersResponse(members=[user_pb(r) for r in page.items],
                                           next_page_token=page.next_page_token)

    # ---- schedules -------------------------------------------------------------
    @handles_errors
    async def CreateSchedule(self, request: pm.CreateScheduleRequest, context: Context) -> pm.CreateScheduleResponse:
        name = validation.text(request.schedule.name, "schedule.name", max_len=200, required=True)
        windows = validation.windows(request.schedule.windows, "schedule.windows")

        def build(row: Schedule, revision: int) -> pm.CreateScheduleResponse:
            return pm.CreateScheduleResponse(schedule=schedule_pb(row), revision=revision)
        outcome = await self.directory.create_schedule(name, windows, idempotent("CreateSchedule", request, build))
        return respond(outcome, build, pm.CreateScheduleResponse)

    @handles_errors
    async def GetSchedule(self, request: pm.GetScheduleRequest, context: Context) -> pm.GetScheduleResponse:
        schedule_id = validation.uuid_str(request.schedule_id, "schedule_id")
        return pm.GetScheduleResponse(schedule=schedule_pb(await self.directory.get_schedule(schedule_id)))

    @handles_errors
    async def ListSchedules(self, request: pm.ListSchedulesRequest, context: Context) -> pm.ListSchedulesResponse:
        size = validation.page_size(request.page_size)
        page = await self.directory.list_schedules(size, request.page_token)
        return pm.ListSchedulesResponse(schedules=[schedule_pb(r) for r in page.items],
                                        next_page_token=page.next_page_token)

    @handles_errors
    async def UpdateSchedule(self, request: pm.UpdateScheduleRequest, context: Context) -> pm.UpdateScheduleResponse:
        schedule_id = validation.uuid_str(request.schedule.schedule_id, "schedule.schedule_id")
        paths = mask_paths(request, ("name", "windows"))
        name = (validation.text(request.schedule.name, "schedule.name", max_len=200, required=True)
                if "name" in paths else None)
        windows = validation.windows(request.schedule.windows, "schedule.windows") if "windows" in paths else None
        written = await self.directory.update_schedule(schedule_id, name, windows)
        return pm.UpdateScheduleResponse(schedule=schedule_pb(written.value), revision=written.revision)

    @handles_errors
    async def DeleteSchedule(self, request: pm.DeleteScheduleRequest, context: Context) -> pm.DeleteScheduleResponse:
        schedule_id = validation.uuid_str(request.schedule_id, "schedule_id")
        return pm.DeleteScheduleResponse(revision=(await self.directory.delete_schedule(schedule_id)).revision)

    # ---- credentials -----------------------------------------------------------
    @handles_errors
    async def IssueCredential(self, request: pm.IssueCredentialRequest,
                              context: Context) -> pm.IssueCredentialResponse:
        user_id = validation.uuid_str(request.user_id, "user_id")
        secret = validation.credential_secret(request.kind, request.secret)
        label = validation.text(request.label, "label", max_len=200, required=False)

        def build(row: Credential, revision: int) -> pm.IssueCredentialResponse:
            return pm.IssueCredentialResponse(credential=credential_pb(row), revision=revision)
        outcome = await self.entitlements.issue_credential(user_id, request.kind, secret, label,
                                                           idempotent("IssueCredential", request, build))
        return respond(outcome, build, pm.IssueCredentialResponse)

    @handles_errors
    async def GetCredential(self, request: pm.GetCredentialRequest, context: Context) -> pm.GetCredentialResponse:
        credential_id = validation.uuid_str(request.credential_id, "credential_id")
        return pm.GetCredentialResponse(credential=credential_pb(await self.entitlements.get_credential(credential_id)))

    @handles_errors
    async def ListCredentials(self, request: pm.ListCredentialsRequest,
                              context: Context) -> pm.ListCredentialsResponse:
        size = validation.page_size(request.page_size)
        user_id = validation.uuid_str(request.user_id, "user_id", required=False)
        page = await self.entitlements.list_credentials(size, request.page_token, user_id)
        return pm.ListCredentialsResponse(credentials=[credential_pb(r) for r in page.items],
                                          next_page_token=page.next_page_token)

    @handles_errors
    async def RevokeCredential(self, request: pm.RevokeCredentialRequest,
                               context: Context) -> pm.RevokeCredentialResponse:
        credential_id = validation.uuid_str(request.credential_id, "credential_id")
        written = await self.entitlements.revoke_credential(credential_id)
        return pm.RevokeCredentialResponse(credential=credential_pb(written.value), revision=written.revision)

    # ---- grants ----------------------------------------------------------------
    @handles_errors
    async def GrantAccess(self, request: pm.GrantAccessRequest, context: Context) -> pm.GrantAccessResponse:
        new = new_grant(request.grant)

        def build(row: Grant, revision: int) -> pm.GrantAccessResponse:
            return pm.GrantAccessResponse(grant=grant_pb(row), revision=revision)
        outcome = await self.entitlements.grant(new.user_id, new.group_id, new.door_id, new.valid_from,
                                                new.valid_until, new.schedule_id,
                                                idempotent("GrantAccess", request, build))
        return respond(outcome, build, pm.GrantAccessResponse)

    @handles_errors
    async def BatchGrantAccess(self, request: pm.BatchGrantAccessRequest,
                               context: Context) -> pm.BatchGrantAccessResponse:
        new = [new_grant(item.grant, prefix) for prefix, item in batch_items(request.requests)]

        def build(rows: list[Grant], revision: int) -> pm.BatchGrantAccessResponse:
            return pm.BatchGrantAccessResponse(grants=[grant_pb(r) for r in rows], revision=revision)
        outcome = await self.entitlements.grant_many(new, idempotent("BatchGrantAccess", request, build))
        return respond(outcome, build, pm.BatchGrantAccessResponse)

    @handles_errors
    async def GetGrant(self, request: pm.GetGrantRequest, context: Context) -> pm.GetGrantResponse:
        grant_id = validation.uuid_str(request.grant_id, "grant_id")
        return pm.GetGrantResponse(grant=grant_pb(await self.entitlements.get_grant(grant_id)))

    @handles_errors
    async def ListGrants(self, request: pm.ListGrantsRequest, context: Context) -> pm.ListGrantsResponse:
        size = validation.page_size(request.page_size)
        filters = {k: validation.uuid_str(getattr(request, k), k, required=False)
                   for k in ("user_id", "group_id", "door_id")}
        page = await self.entitlements.list_grants(size, request.page_token, include_revoked=request.include_revoked,
                                                   **filters)
        return pm.ListGrantsResponse(grants=[grant_pb(r) for r in page.items], next_page_token=page.next_page_token)

    @handles_errors
    async def RevokeAccess(self, request: pm.RevokeAccessRequest, context: Context) -> pm.RevokeAccessResponse:
        grant_id = validation.uuid_str(request.grant_id, "grant_id")
        written = await self.entitlements.revoke(grant_id)
        return pm.RevokeAccessResponse(grant=grant_pb(written.value), revision=written.revision)

    @handles_errors
    async def BatchRevokeAccess(self, request: pm.BatchRevokeAccessRequest,
                                context: Context) -> pm.BatchRevokeAccessResponse:
        grant_ids = validation.distinct_ids(request.grant_ids, "grant_ids")

        def build(rows: list[Grant], revision: int) -> pm.BatchRevokeAccessResponse:
            return pm.BatchRevokeAccessResponse(grants=[grant_pb(r) for r in rows], revision=revision)
        outcome = await self.entitlements.revoke_many(grant_ids, idempotent("BatchRevokeAccess", request, build))
        return respond(outcome, build, pm.BatchRevokeAccessResponse)

    # ---- explain ---------------------------------------------------------------
    @handles_errors
    async def ExplainAccess(self, request: pm.ExplainAccessRequest, context: Context) -> pm.ExplainAccessResponse:
        user_id = validation.uuid_str(request.user_id, "user_id")
        door_id = validation.uuid_str(request.door_id, "door_id")
        at = timestamp_in(request, "at", "at") or dt.datetime.now(dt.UTC)
        verdict, revision = await self.entitlements.explain(user_id, door_id, at)
        return pm.ExplainAccessResponse(
            decision=ev.DECISION_GRANTED if verdict.granted else ev.DECISION_DENIED,
            reason=cast(ev.DecisionReason, int(verdict.reason)), revision=revision,
            grants=[pm.GrantEvaluation(grant_id=r.grant_id, via_group_id=r.via_group_id,
                                        reason=cast(ev.DecisionReason, int(reason)))
                    for r, reason in verdict.per_rule],
        )

    # ---- access snapshot: the contract and the work are in snapshot.py -----------
    async def ExportAccessSnapshot(self, request: pm.ExportAccessSnapshotRequest, context: Context) -> None:
        await self.snapshot.serve(context)
