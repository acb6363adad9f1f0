"""PermissionsService servicer: protobuf in, use case, protobuf out; errors become statuses."""

from __future__ import annotations

import datetime as dt
import hmac

from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit.errors import AlreadyExists, InvalidArgument, handles_errors
from latchkit.identity import actor
from services.permissions import domain as v
from services.permissions import snapshot
from services.permissions.adapters.postgres import Database
from services.permissions.service import Access, Directory, get, page

MIN_TS, MAX_TS = -62135596800, 253402300799


def ts(value: dt.datetime | None, target) -> None:
    if value is not None:
        target.FromDatetime(value)


def user_pb(r: dict) -> pm.User:
    m = pm.User(user_id=r["user_id"], display_name=r["display_name"], email=r["email"],
                external_id=r["external_id"],
                state=ev.USER_STATE_SUSPENDED if r["suspended"] else ev.USER_STATE_ACTIVE)
    ts(r["create_time"], m.create_time)
    ts(r["update_time"], m.update_time)
    return m


def door_pb(r: dict) -> pm.Door:
    m = pm.Door(door_id=r["door_id"], name=r["name"], site=r["site"], time_zone=r["time_zone"],
                lockdown=r["lockdown"])
    if r["max_view_staleness_ms"]:
        m.max_view_staleness.FromMilliseconds(r["max_view_staleness_ms"])
    ts(r["create_time"], m.create_time)
    ts(r["update_time"], m.update_time)
    return m


def group_pb(r: dict) -> pm.Group:
    m = pm.Group(group_id=r["group_id"], name=r["name"])
    ts(r["create_time"], m.create_time)
    ts(r["update_time"], m.update_time)
    return m


def credential_pb(r: dict) -> pm.Credential:
    m = pm.Credential(credential_id=r["credential_id"], user_id=r["user_id"], kind=r["kind"], label=r["label"],
                      state=ev.CREDENTIAL_STATE_REVOKED if r["revoked"] else ev.CREDENTIAL_STATE_ACTIVE)
    ts(r["create_time"], m.create_time)
    ts(r["revoke_time"], m.revoke_time)
    return m


def grant_pb(r: dict) -> pm.Grant:
    m = pm.Grant(grant_id=r["grant_id"], door_id=r["door_id"], schedule_id=r["schedule_id"], revoked=r["revoked"])
    if r["user_id"]:
        m.user_id = r["user_id"]
    else:
        m.group_id = r["group_id"]
    for key in ("valid_from", "valid_until", "create_time", "revoke_time"):
        ts(r[key], getattr(m, key))
    return m


def timestamp_in(message, field: str, name: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    if not (MIN_TS <= value.seconds <= MAX_TS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidArgument(name, "is not a valid timestamp")
    return value.ToDatetime(tzinfo=dt.UTC)


def mask_paths(request, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """An empty mask updates every updatable field; an unknown path is INVALID_ARGUMENT."""
    paths = tuple(request.update_mask.paths) or allowed
    for path in paths:
        if path not in allowed:
            raise InvalidArgument("update_mask", f"{path[:80]!r} is not updatable (allowed: {', '.join(allowed)})")
    return paths


class PermissionsServicer(permissions_pb2_grpc.PermissionsServiceServicer):
    def __init__(self, db: Database, hmac_key: bytes) -> None:
        self.db = db
        self.hmac_key = hmac_key
        self.directory = Directory(db)
        self.access = Access(db, hmac_key)

    async def _write(self, method: str, response, work, request=None):
        """Run `work(uow, response)` in one write transaction; replay a create by request_id.

        A retry (same caller, request_id and request) gets the first answer; a
        request_id reused for a different request is refused (AIP-155), never
        answered with another request's result.
        """
        caller, replay = actor(), None
        request_id = v.request_id(request.request_id) if request is not None else ""
        digest = self._request_digest(method, request) if request_id else b""
        async with self.db.write() as uow:
            if request_id:
                replay = await uow.row("SELECT method, response, request_hash FROM idempotency "
                                       "WHERE caller = :c AND request_id = :r", c=caller, r=request_id)
            if replay is not None:
                uow.cancel()
            else:
                await work(uow, response)
                if request_id:
                    response.revision = uow.revision
                    await uow.execute("INSERT INTO idempotency (caller, request_id, method, response, request_hash) "
                                      "VALUES (:c, :r, :m, :b, :h)", c=caller, r=request_id, m=method,
                                      b=response.SerializeToString(), h=digest)
        if replay is not None:
            if replay["method"] != method:
                raise AlreadyExists(f"request_id was already used for {replay['method']}")
            # Rows from before request_hash existed carry none: replayed as they always were.
            if replay["request_hash"] is not None and bytes(replay["request_hash"]) != digest:
                raise InvalidArgument("request_id", "was already used for a different request; a retry must "
                                                    "repeat the request unchanged, a new request needs a new "
                                                    "request_id")
            return type(response).FromString(replay["response"])
        response.revision = uow.revision
        return response

    def _request_digest(self, method: str, request) -> bytes:
        """HMAC-SHA256 of the whole request, deterministically serialized.

        Keyed, because some requests carry a secret (a credential's PIN has few
        enough values to brute-force an unkeyed hash); the method and a label in
        front keep it apart from the credential hashes made with the same key.
        """
        body = request.SerializeToString(deterministic=True)
        return hmac.digest(self.hmac_key, b"latchkey/idempotency/v1\0" + method.encode() + b"\0" + body,
                           "sha256")

    async def _read(self, fn):
        async with self.db.read() as uow:
            return await fn(uow)

    # ---- users -----------------------------------------------------------------
    @handles_errors
    async def CreateUser(self, request, context):
        u = request.user
        name = v.text(u.display_name, "user.display_name", max_len=200, required=True)
        email = v.text(u.email, "user.email", max_len=320, required=False)
        ext = v.text(u.external_id, "user.external_id", max_len=200, required=False)

        async def work(uow, resp):
            resp.user.CopyFrom(user_pb(await self.directory.create_user(uow, name, email, ext)))
        return await self._write("CreateUser", pm.CreateUserResponse(), work, request)

    @handles_errors
    async def GetUser(self, request, context):
        user_id = v.uuid_str(request.user_id, "user_id")
        return pm.GetUserResponse(user=user_pb(await self._read(lambda uow: get(uow, "users", user_id))))

    @handles_errors
    async def ListUsers(self, request, context):
        size = v.page_size(request.page_size)
        if request.state not in (0, ev.USER_STATE_ACTIVE, ev.USER_STATE_SUSPENDED):
            raise InvalidArgument("state", "unknown user state")
        where = "true" if not request.state else f"suspended = {request.state == ev.USER_STATE_SUSPENDED}"
        rows, token = await self._read(lambda uow: page(uow, "users", size, request.page_token, where))
        return pm.ListUsersResponse(users=[user_pb(r) for r in rows], next_page_token=token)

    @handles_errors
    async def UpdateUser(self, request, context):
        user_id = v.uuid_str(request.user.user_id, "user.user_id")
        changes = {}
        for path in mask_paths(request, ("display_name", "email", "external_id")):
            limit, required = {"display_name": (200, True), "email": (320, False), "external_id": (200, False)}[path]
            changes[path] = v.text(getattr(request.user, path), f"user.{path}", max_len=limit, required=required)

        async def work(uow, resp):
            resp.user.CopyFrom(user_pb(await self.directory.update_user(uow, user_id, changes)))
        return await self._write("UpdateUser", pm.UpdateUserResponse(), work)

    @handles_errors
    async def DeleteUser(self, request, context):
        user_id = v.uuid_str(request.user_id, "user_id")
        return await self._write("DeleteUser", pm.DeleteUserResponse(),
                                 lambda uow, resp: self.directory.delete_user(uow, user_id))

    async def _suspend(self, request, suspended: bool, response):
        user_id = v.uuid_str(request.user_id, "user_id")

        async def work(uow, resp):
            resp.user.CopyFrom(user_pb(await self.directory.set_suspended(uow, user_id, suspended)))
        return await self._write("SuspendUser" if suspended else "ReactivateUser", response, work)

    @handles_errors
    async def SuspendUser(self, request, context):
        return await self._suspend(request, True, pm.SuspendUserResponse())

    @handles_errors
    async def ReactivateUser(self, request, context):
        return await self._suspend(request, False, pm.ReactivateUserResponse())

    # ---- doors -----------------------------------------------------------------
    @handles_errors
    async def CreateDoor(self, request, context):
        d = request.door
        name = v.text(d.name, "door.name", max_len=200, required=True)
        site = v.text(d.site, "door.site", max_len=200, required=False)
        zone = v.time_zone(d.time_zone, "door.time_zone")
        staleness = v.max_view_staleness_ms(d.max_view_staleness, "door.max_view_staleness")

        async def work(uow, resp):
            resp.door.CopyFrom(door_pb(await self.directory.create_door(uow, name, site, zone, d.lockdown,
                                                                        staleness)))
        return await self._write("CreateDoor", pm.CreateDoorResponse(), work, request)

    @handles_errors
    async def GetDoor(self, request, context):
        door_id = v.uuid_str(request.door_id, "door_id")
        return pm.GetDoorResponse(door=door_pb(await self._read(lambda uow: get(uow, "doors", door_id))))

    @handles_errors
    async def ListDoors(self, request, context):
        size = v.page_size(request.page_size)
        site = v.text(request.site, "site", max_len=200, required=False)
        rows, token = await self._read(lambda uow: page(
            uow, "doors", size, request.page_token, "(:site = '' OR site = :site)", site=site))
        return pm.ListDoorsResponse(doors=[door_pb(r) for r in rows], next_page_token=token)

    @handles_errors
    async def UpdateDoor(self, request, context):
        door_id = v.uuid_str(request.door.door_id, "door.door_id")
        changes = {}
        for path in mask_paths(request, ("name", "site", "time_zone", "max_view_staleness")):
            value = getattr(request.door, path)
            if path == "time_zone":
                changes[path] = v.time_zone(value, "door.time_zone")
            elif path == "max_view_staleness":
                changes["max_view_staleness_ms"] = v.max_view_staleness_ms(value, "door.max_view_staleness")
            else:
                changes[path] = v.text(value, f"door.{path}", max_len=200, required=path == "name")

        async def work(uow, resp):
            resp.door.CopyFrom(door_pb(await self.directory.update_door(uow, door_id, changes)))
        return await self._write("UpdateDoor", pm.UpdateDoorResponse(), work)

    @handles_errors
    async def DeleteDoor(self, request, context):
        door_id = v.uuid_str(request.door_id, "door_id")
        return await self._write("DeleteDoor", pm.DeleteDoorResponse(),
                                 lambda uow, resp: self.directory.delete_door(uow, door_id))

    @handles_errors
    async def SetDoorLockdown(self, request, context):
        door_id = v.uuid_str(request.door_id, "door_id")

        async def work(uow, resp):
            row = await self.directory.update_door(uow, door_id, {"lockdown": request.lockdown})
            resp.door.CopyFrom(door_pb(row))
        return await self._write("SetDoorLockdown", pm.SetDoorLockdownResponse(), work)

    # ---- groups ----------------------------------------------------------------
    @handles_errors
    async def CreateGroup(self, request, context):
        name = v.text(request.group.name, "group.name", max_len=200, required=True)

        async def work(uow, resp):
            resp.group.CopyFrom(group_pb(await self.directory.create_group(uow, name)))
        return await self._write("CreateGroup", pm.CreateGroupResponse(), work, request)

    @handles_errors
    async def GetGroup(self, request, context):
        group_id = v.uuid_str(request.group_id, "group_id")
        return pm.GetGroupResponse(group=group_pb(await self._read(lambda uow: get(uow, "groups", group_id))))

    @handles_errors
    async def ListGroups(self, request, context):
        size = v.page_size(request.page_size)
        rows, token = await self._read(lambda uow: page(uow, "groups", size, request.page_token))
        return pm.ListGroupsResponse(groups=[group_pb(r) for r in rows], next_page_token=token)

    @handles_errors
    async def UpdateGroup(self, request, context):
        group_id = v.uuid_str(request.group.group_id, "group.group_id")
        name = None
        if "name" in mask_paths(request, ("name",)):
            name = v.text(request.group.name, "group.name", max_len=200, required=True)

        async def work(uow, resp):
            resp.group.CopyFrom(group_pb(await self.directory.update_group(uow, group_id, name)))
        return await self._write("UpdateGroup", pm.UpdateGroupResponse(), work)

    @handles_errors
    async def DeleteGroup(self, request, context):
        group_id = v.uuid_str(request.group_id, "group_id")
        return await self._write("DeleteGroup", pm.DeleteGroupResponse(),
                                 lambda uow, resp: self.directory.delete_group(uow, group_id))

    async def _member(self, request, member: bool, response):
        group_id = v.uuid_str(request.group_id, "group_id")
        user_id = v.uuid_str(request.user_id, "user_id")
        return await self._write("AddGroupMember" if member else "RemoveGroupMember", response,
                                 lambda uow, resp: self.directory.set_member(uow, group_id, user_id, member))

    @handles_errors
    async def AddGroupMember(self, request, context):
        return await self._member(request, True, pm.AddGroupMemberResponse())

    @handles_errors
    async def RemoveGroupMember(self, request, context):
        return await self._member(request, False, pm.RemoveGroupMemberResponse())

    @handles_errors
    async def ListGroupMembers(self, request, context):
        group_id = v.uuid_str(request.group_id, "group_id")
        size = v.page_size(request.page_size)

        async def fn(uow):
            await get(uow, "groups", group_id)
            return await page(uow, "users", size, request.page_token,
                              "user_id IN (SELECT user_id FROM group_members WHERE group_id = CAST(:g AS uuid))",
                              g=group_id)
        rows, token = await self._read(fn)
        return pm.ListGroupMembersResponse(members=[user_pb(r) for r in rows], next_page_token=token)

    # ---- schedules -------------------------------------------------------------
    async def _schedule_pb(self, uow, row) -> pm.Schedule:
        m = pm.Schedule(schedule_id=row["schedule_id"], name=row["name"],
                        windows=await self.directory.schedule_windows(uow, row["schedule_id"]))
        ts(row["create_time"], m.create_time)
        ts(row["update_time"], m.update_time)
        return m

    @handles_errors
    async def CreateSchedule(self, request, context):
        name = v.text(request.schedule.name, "schedule.name", max_len=200, required=True)
        windows = v.windows(request.schedule.windows, "schedule.windows")

        async def work(uow, resp):
            row = await self.directory.create_schedule(uow, name, windows)
            resp.schedule.CopyFrom(await self._schedule_pb(uow, row))
        return await self._write("CreateSchedule", pm.CreateScheduleResponse(), work, request)

    @handles_errors
    async def GetSchedule(self, request, context):
        schedule_id = v.uuid_str(request.schedule_id, "schedule_id")

        async def fn(uow):
            return await self._schedule_pb(uow, await get(uow, "schedules", schedule_id))
        return pm.GetScheduleResponse(schedule=await self._read(fn))

    @handles_errors
    async def ListSchedules(self, request, context):
        size = v.page_size(request.page_size)

        async def fn(uow):
            rows, token = await page(uow, "schedules", size, request.page_token)
            return [await self._schedule_pb(uow, r) for r in rows], token
        items, token = await self._read(fn)
        return pm.ListSchedulesResponse(schedules=items, next_page_token=token)

    @handles_errors
    async def UpdateSchedule(self, request, context):
        schedule_id = v.uuid_str(request.schedule.schedule_id, "schedule.schedule_id")
        paths = mask_paths(request, ("name", "windows"))
        name = v.text(request.schedule.name, "schedule.name", max_len=200, required=True) if "name" in paths else None
        windows = v.windows(request.schedule.windows, "schedule.windows") if "windows" in paths else None

        async def work(uow, resp):
            row = await self.directory.update_schedule(uow, schedule_id, name, windows)
            resp.schedule.CopyFrom(await self._schedule_pb(uow, row))
        return await self._write("UpdateSchedule", pm.UpdateScheduleResponse(), work)

    @handles_errors
    async def DeleteSchedule(self, request, context):
        schedule_id = v.uuid_str(request.schedule_id, "schedule_id")
        return await self._write("DeleteSchedule", pm.DeleteScheduleResponse(),
                                 lambda uow, resp: self.directory.delete_schedule(uow, schedule_id))

    # ---- credentials -----------------------------------------------------------
    @handles_errors
    async def IssueCredential(self, request, context):
        user_id = v.uuid_str(request.user_id, "user_id")
        secret = v.credential_secret(request.kind, request.secret)
        label = v.text(request.label, "label", max_len=200, required=False)

        async def work(uow, resp):
            row = await self.access.issue_credential(uow, user_id, request.kind, secret, label)
            resp.credential.CopyFrom(credential_pb(row))
        return await self._write("IssueCredential", pm.IssueCredentialResponse(), work, request)

    @handles_errors
    async def GetCredential(self, request, context):
        cred_id = v.uuid_str(request.credential_id, "credential_id")
        row = await self._read(lambda uow: get(uow, "credentials", cred_id))
        return pm.GetCredentialResponse(credential=credential_pb(row))

    @handles_errors
    async def ListCredentials(self, request, context):
        size = v.page_size(request.page_size)
        user_id = v.uuid_str(request.user_id, "user_id", required=False)
        rows, token = await self._read(lambda uow: page(
            uow, "credentials", size, request.page_token,
            "(:u = '' OR user_id = CAST(NULLIF(:u, '') AS uuid))", u=user_id))
        return pm.ListCredentialsResponse(credentials=[credential_pb(r) for r in rows], next_page_token=token)

    @handles_errors
    async def RevokeCredential(self, request, context):
        cred_id = v.uuid_str(request.credential_id, "credential_id")

        async def work(uow, resp):
            resp.credential.CopyFrom(credential_pb(await self.access.revoke_credential(uow, cred_id)))
        return await self._write("RevokeCredential", pm.RevokeCredentialResponse(), work)

    # ---- grants ----------------------------------------------------------------
    @handles_errors
    async def GrantAccess(self, request, context):
        g = request.grant
        subject = g.WhichOneof("subject")
        if subject is None:
            raise InvalidArgument("grant.user_id", "a grant needs a user_id or a group_id")
        user_id = v.uuid_str(g.user_id, "grant.user_id") if subject == "user_id" else ""
        group_id = v.uuid_str(g.group_id, "grant.group_id") if subject == "group_id" else ""
        door_id = v.uuid_str(g.door_id, "grant.door_id")
        schedule_id = v.uuid_str(g.schedule_id, "grant.schedule_id", required=False)
        valid_from = timestamp_in(g, "valid_from", "grant.valid_from")
        valid_until = timestamp_in(g, "valid_until", "grant.valid_until")
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidArgument("grant.valid_until", "must be after valid_from")

        async def work(uow, resp):
            row = await self.access.grant(uow, user_id, group_id, door_id, valid_from, valid_until, schedule_id)
            resp.grant.CopyFrom(grant_pb(row))
        return await self._write("GrantAccess", pm.GrantAccessResponse(), work, request)

    @handles_errors
    async def GetGrant(self, request, context):
        grant_id = v.uuid_str(request.grant_id, "grant_id")
        return pm.GetGrantResponse(grant=grant_pb(await self._read(lambda uow: get(uow, "grants", grant_id))))

    @handles_errors
    async def ListGrants(self, request, context):
        size = v.page_size(request.page_size)
        filters = {k: v.uuid_str(getattr(request, k), k, required=False) for k in ("user_id", "group_id", "door_id")}
        where = " AND ".join(f"(:{k} = '' OR {k} = CAST(NULLIF(:{k}, '') AS uuid))" for k in filters)
        where += "" if request.include_revoked else " AND NOT revoked"
        rows, token = await self._read(lambda uow: page(uow, "grants", size, request.page_token, where, **filters))
        return pm.ListGrantsResponse(grants=[grant_pb(r) for r in rows], next_page_token=token)

    @handles_errors
    async def RevokeAccess(self, request, context):
        grant_id = v.uuid_str(request.grant_id, "grant_id")

        async def work(uow, resp):
            resp.grant.CopyFrom(grant_pb(await self.access.revoke(uow, grant_id)))
        return await self._write("RevokeAccess", pm.RevokeAccessResponse(), work)

    # ---- explain ---------------------------------------------------------------
    @handles_errors
    async def ExplainAccess(self, request, context):
        user_id = v.uuid_str(request.user_id, "user_id")
        door_id = v.uuid_str(request.door_id, "door_id")
        at = timestamp_in(request, "at", "at") or dt.datetime.now(dt.UTC)
        verdict, revision = await self.access.explain(user_id, door_id, at)
        return pm.ExplainAccessResponse(
            decision=ev.DECISION_GRANTED if verdict.granted else ev.DECISION_DENIED,
            reason=int(verdict.reason), revision=revision,
            grants=[pm.GrantEvaluation(grant_id=r.grant_id, via_group_id=r.via_group_id, reason=int(reason))
                    for r, reason in verdict.per_rule],
        )

    # ---- access snapshot: the contract and the work are in snapshot.py -----------
    async def ExportAccessSnapshot(self, request, context):
        await snapshot.serve(self.db, context)
