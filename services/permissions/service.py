"""Permissions use cases: each is one transaction with its revision and its events.

Checks run inside the write transaction, after the revision lock, so what
they read cannot change before commit. Any error raised here rolls the whole
transaction back: nothing is partially written.
"""

from __future__ import annotations

import datetime as dt
import uuid

from latchkey.events.v1 import events_pb2 as ev

from latchkit import secrets
from latchkit.access_rules import Verdict, evaluate
from latchkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.permissions import effective
from services.permissions.adapters.postgres import Database, MissingReference, UnitOfWork
from services.permissions.domain import decode_page_token, encode_page_token

USER_COLS = ("user_id::text AS user_id, display_name, email, coalesce(external_id, '') AS external_id, "
             "suspended, create_time, update_time")
DOOR_COLS = "door_id::text AS door_id, name, site, time_zone, lockdown, max_view_staleness_ms, create_time, update_time"
GROUP_COLS = "group_id::text AS group_id, name, create_time, update_time"
SCHEDULE_COLS = "schedule_id::text AS schedule_id, name, create_time, update_time"
CRED_COLS = "credential_id::text AS credential_id, user_id::text AS user_id, kind, label, revoked, create_time, revoke_time"
GRANT_COLS = ("grant_id::text AS grant_id, coalesce(user_id::text, '') AS user_id, "
              "coalesce(group_id::text, '') AS group_id, door_id::text AS door_id, valid_from, valid_until, "
              "coalesce(schedule_id::text, '') AS schedule_id, revoked, create_time, revoke_time")
TABLES = {"users": ("user_id", USER_COLS), "doors": ("door_id", DOOR_COLS), "groups": ("group_id", GROUP_COLS),
          "schedules": ("schedule_id", SCHEDULE_COLS), "credentials": ("credential_id", CRED_COLS),
          "grants": ("grant_id", GRANT_COLS)}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


async def get(uow: UnitOfWork, table: str, key: str, *, field: str | None = None, lock: bool = False) -> dict:
    id_col, cols = TABLES[table]
    row = await uow.row(f"SELECT {cols} FROM {table} WHERE {id_col} = CAST(:k AS uuid)"
                        + (" FOR UPDATE" if lock else ""), k=key)
    if row is None:
        raise NotFound(f"{field or id_col} {key} not found")
    return row


async def page(uow: UnitOfWork, table: str, size: int, token: str, where: str = "true", **params) -> tuple[list, str]:
    id_col, cols = TABLES[table]
    after = decode_page_token(token, table)
    rows = await uow.rows(
        f"SELECT {cols} FROM {table} WHERE {where} AND (:after = '' OR {id_col} > CAST(NULLIF(:after, '') AS uuid)) "
        f"ORDER BY {id_col} LIMIT :n", after=after, n=size + 1, **params)
    more = len(rows) > size
    rows = rows[:size]
    return rows, encode_page_token(table, rows[-1][id_col]) if more else ""


def windows_rows(rows: list[dict]) -> list[ev.ScheduleWindow]:
    return [ev.ScheduleWindow(day_of_week=r["day"], start_minute=r["start_minute"], end_minute=r["end_minute"])
            for r in rows]


class Directory:
    """Users, doors, groups and schedules."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- users ---------------------------------------------------------------
    async def create_user(self, uow: UnitOfWork, display_name: str, email: str, external_id: str) -> dict:
        if external_id and await uow.row("SELECT 1 FROM users WHERE external_id = :e", e=external_id):
            raise AlreadyExists(f"a user with external_id {external_id!r} already exists")
        user_id, t = new_id(), now()
        await uow.execute(
            "INSERT INTO users (user_id, display_name, email, external_id, create_time, update_time) "
            "VALUES (CAST(:id AS uuid), :n, :e, NULLIF(:x, ''), :t, :t)",
            id=user_id, n=display_name, e=email, x=external_id, t=t)
        row = await get(uow, "users", user_id)
        self._user_event(uow, row)
        return row

    def _user_event(self, uow: UnitOfWork, row: dict, deleted: bool = False) -> None:
        state = ev.USER_STATE_SUSPENDED if row["suspended"] else ev.USER_STATE_ACTIVE
        uow.emit(ev.UserChanged(user_id=row["user_id"], display_name=row["display_name"], state=state,
                                deleted=deleted), f"user/{row['user_id']}")

    async def update_user(self, uow: UnitOfWork, user_id: str, changes: dict) -> dict:
        row = await get(uow, "users", user_id, lock=True)
        x = changes.get("external_id")
        if x and await uow.row("SELECT 1 FROM users WHERE external_id = :e AND user_id <> CAST(:u AS uuid)",
                               e=x, u=user_id):
            raise AlreadyExists(f"a user with external_id {x!r} already exists")
        if not changes:
            return row
        sets = ", ".join(f"{k} = :{k}" if k != "external_id" else "external_id = NULLIF(:external_id, '')"
                         for k in changes)
        await uow.execute(f"UPDATE users SET {sets}, update_time = :t WHERE user_id = CAST(:u AS uuid)",
                          u=user_id, t=now(), **changes)
        row = await get(uow, "users", user_id)
        self._user_event(uow, row)
        return row

    async def set_suspended(self, uow: UnitOfWork, user_id: str, suspended: bool) -> dict:
        row = await get(uow, "users", user_id, lock=True)
        if row["suspended"] == suspended:
            return row  # already so: no change, no revision
        await uow.execute("UPDATE users SET suspended = :s, update_time = :t WHERE user_id = CAST(:u AS uuid)",
                          s=suspended, t=now(), u=user_id)
        row = await get(uow, "users", user_id)
        self._user_event(uow, row)
        await effective.publish_pairs(uow, await effective.pairs_of_user(uow, user_id))
        return row

    async def delete_user(self, uow: UnitOfWork, user_id: str) -> None:
        row = await get(uow, "users", user_id, lock=True)
        pairs = await effective.pairs_of_user(uow, user_id)
        creds = await uow.rows(f"SELECT {CRED_COLS}, secret_hash FROM credentials WHERE user_id = CAST(:u AS uuid)",
                               u=user_id)
        grants = await uow.rows(f"SELECT {GRANT_COLS} FROM grants WHERE user_id = CAST(:u AS uuid) AND NOT revoked",
                                u=user_id)
        await uow.execute("DELETE FROM users WHERE user_id = CAST(:u AS uuid)", u=user_id)
        for c in creds:
            uow.emit(ev.CredentialChanged(credential_id=c["credential_id"], user_id=user_id, kind=c["kind"],
                                          secret_hash=bytes(c["secret_hash"]), state=ev.CREDENTIAL_STATE_REVOKED,
                                          deleted=True), f"credential/{c['credential_id']}")
        for g in grants:
            uow.emit(grant_event(g, revoked=True), f"grant/{g['grant_id']}")
        self._user_event(uow, row, deleted=True)
        await effective.publish_pairs(uow, pairs)

    # ---- doors ---------------------------------------------------------------
    def _door_event(self, uow: UnitOfWork, row: dict, deleted: bool = False) -> None:
        event = ev.DoorChanged(door_id=row["door_id"], name=row["name"], site=row["site"],
                               time_zone=row["time_zone"], lockdown=row["lockdown"], deleted=deleted)
        if row["max_view_staleness_ms"]:
            event.max_view_staleness.FromMilliseconds(row["max_view_staleness_ms"])
        uow.emit(event, f"door/{row['door_id']}")

    async def create_door(self, uow: UnitOfWork, name: str, site: str, time_zone: str, lockdown: bool,
                          max_view_staleness_ms: int = 0) -> dict:
        door_id, t = new_id(), now()
        await uow.execute(
            "INSERT INTO doors (door_id, name, site, time_zone, lockdown, max_view_staleness_ms, create_time, "
            "update_time) VALUES (CAST(:id AS uuid), :n, :s, :z, :l, :m, :t, :t)", id=door_id, n=name, s=site,
            z=time_zone, l=lockdown, m=max_view_staleness_ms, t=t)
        row = await get(uow, "doors", door_id)
        self._door_event(uow, row)
        return row

    async def update_door(self, uow: UnitOfWork, door_id: str, changes: dict) -> dict:
        row = await get(uow, "doors", door_id, lock=True)
        if not changes:
            return row
        sets = ", ".join(f"{k} = :{k}" for k in changes)
        await uow.execute(f"UPDATE doors SET {sets}, update_time = :t WHERE door_id = CAST(:d AS uuid)",
                          d=door_id, t=now(), **changes)
        new = await get(uow, "doors", door_id)
        self._door_event(uow, new)
        if any(new[k] != row[k] for k in ("time_zone", "lockdown", "max_view_staleness_ms")):
            await effective.publish_pairs(uow, await effective.pairs_of_door(uow, door_id))
        return new

    async def delete_door(self, uow: UnitOfWork, door_id: str) -> None:
        row = await get(uow, "doors", door_id, lock=True)
        pairs = await effective.pairs_of_door(uow, door_id)
        grants = await uow.rows(f"SELECT {GRANT_COLS} FROM grants WHERE door_id = CAST(:d AS uuid) AND NOT revoked",
                                d=door_id)
        await uow.execute("DELETE FROM doors WHERE door_id = CAST(:d AS uuid)", d=door_id)
        for g in grants:
            uow.emit(grant_event(g, revoked=True), f"grant/{g['grant_id']}")
        self._door_event(uow, row, deleted=True)
        await effective.publish_pairs(uow, pairs)

    # ---- groups --------------------------------------------------------------
    async def _unique_group_name(self, uow: UnitOfWork, name: str, group_id: str = "") -> None:
        if await uow.row("SELECT 1 FROM groups WHERE name = :n AND group_id::text <> :g", n=name, g=group_id):
            raise AlreadyExists(f"a group named {name!r} already exists")

    async def create_group(self, uow: UnitOfWork, name: str) -> dict:
        await self._unique_group_name(uow, name)
        group_id, t = new_id(), now()
        await uow.execute("INSERT INTO groups (group_id, name, create_time, update_time) "
                          "VALUES (CAST(:id AS uuid), :n, :t, :t)", id=group_id, n=name, t=t)
        row = await get(uow, "groups", group_id)
        uow.emit(ev.GroupChanged(group_id=group_id, name=name), f"group/{group_id}")
        return row

    async def update_group(self, uow: UnitOfWork, group_id: str, name: str | None) -> dict:
        row = await get(uow, "groups", group_id, lock=True)
        if name is None or name == row["name"]:
            return row
        await self._unique_group_name(uow, name, group_id)
        await uow.execute("UPDATE groups SET name = :n, update_time = :t WHERE group_id = CAST(:g AS uuid)",
                          n=name, t=now(), g=group_id)
        uow.emit(ev.GroupChanged(group_id=group_id, name=name), f"group/{group_id}")
        return await get(uow, "groups", group_id)

    async def delete_group(self, uow: UnitOfWork, group_id: str) -> None:
        row = await get(uow, "groups", group_id, lock=True)
        pairs = await effective.pairs_of_group(uow, group_id)
        grants = await uow.rows(f"SELECT {GRANT_COLS} FROM grants WHERE group_id = CAST(:g AS uuid) AND NOT revoked",
                                g=group_id)
        await uow.execute("DELETE FROM groups WHERE group_id = CAST(:g AS uuid)", g=group_id)
        for g in grants:
            uow.emit(grant_event(g, revoked=True), f"grant/{g['grant_id']}")
        uow.emit(ev.GroupChanged(group_id=group_id, name=row["name"], deleted=True), f"group/{group_id}")
        await effective.publish_pairs(uow, pairs)

    async def set_member(self, uow: UnitOfWork, group_id: str, user_id: str, member: bool) -> None:
        await get(uow, "groups", group_id, field="group_id", lock=True)
        await get(uow, "users", user_id, field="user_id")
        if member:
            changed = await uow.execute(
                "INSERT INTO group_members VALUES (CAST(:g AS uuid), CAST(:u AS uuid)) ON CONFLICT DO NOTHING",
                g=group_id, u=user_id)
        else:
            changed = await uow.execute(
                "DELETE FROM group_members WHERE group_id = CAST(:g AS uuid) AND user_id = CAST(:u AS uuid)",
                g=group_id, u=user_id)
            if not changed:
                raise NotFound(f"user {user_id} is not a member of group {group_id}")
        if changed:
            uow.emit(ev.GroupMembershipChanged(group_id=group_id, user_id=user_id, member=member),
                     f"membership/{group_id}/{user_id}")
            await effective.publish_pairs(uow, await effective.pairs_of_membership(uow, group_id, user_id))

    # ---- schedules -----------------------------------------------------------
    async def schedule_windows(self, uow: UnitOfWork, schedule_id: str) -> list[ev.ScheduleWindow]:
        return windows_rows(await uow.rows(
            "SELECT day, start_minute, end_minute FROM schedule_windows WHERE schedule_id = CAST(:s AS uuid) "
            "ORDER BY day, start_minute", s=schedule_id))

    async def _write_windows(self, uow: UnitOfWork, schedule_id: str, windows) -> None:
        await uow.execute("DELETE FROM schedule_windows WHERE schedule_id = CAST(:s AS uuid)", s=schedule_id)
        await uow.execute_many(
            "INSERT INTO schedule_windows VALUES (CAST(:s AS uuid), :d, :a, :b)",
            [{"s": schedule_id, "d": w.day, "a": w.start_minute, "b": w.end_minute} for w in windows])

    async def create_schedule(self, uow: UnitOfWork, name: str, windows) -> dict:
        schedule_id, t = new_id(), now()
        await uow.execute("INSERT INTO schedules VALUES (CAST(:id AS uuid), :n, :t, :t)", id=schedule_id, n=name, t=t)
        await self._write_windows(uow, schedule_id, windows)
        row = await get(uow, "schedules", schedule_id)
        uow.emit(ev.ScheduleChanged(schedule_id=schedule_id, name=name,
                                    windows=await self.schedule_windows(uow, schedule_id)),
                 f"schedule/{schedule_id}")
        return row

    async def update_schedule(self, uow: UnitOfWork, schedule_id: str, name: str | None, windows) -> dict:
        await get(uow, "schedules", schedule_id, lock=True)
        if name is None and windows is None:
            return await get(uow, "schedules", schedule_id)
        if name is not None:
            await uow.execute("UPDATE schedules SET name = :n WHERE schedule_id = CAST(:s AS uuid)",
                              n=name, s=schedule_id)
        if windows is not None:
            await self._write_windows(uow, schedule_id, windows)
        await uow.execute("UPDATE schedules SET update_time = :t WHERE schedule_id = CAST(:s AS uuid)",
                          t=now(), s=schedule_id)
        row = await get(uow, "schedules", schedule_id)
        uow.emit(ev.ScheduleChanged(schedule_id=schedule_id, name=row["name"],
                                    windows=await self.schedule_windows(uow, schedule_id)),
                 f"schedule/{schedule_id}")
        if windows is not None:
            await effective.publish_pairs(uow, await effective.pairs_of_schedule(uow, schedule_id))
        return row

    async def delete_schedule(self, uow: UnitOfWork, schedule_id: str) -> None:
        row = await get(uow, "schedules", schedule_id, lock=True)
        if await uow.row("SELECT 1 FROM grants WHERE schedule_id = CAST(:s AS uuid) AND NOT revoked", s=schedule_id):
            raise FailedPrecondition(f"schedule {schedule_id} is used by an active grant; revoke it first")
        await uow.execute("UPDATE grants SET schedule_id = NULL WHERE schedule_id = CAST(:s AS uuid)", s=schedule_id)
        await uow.execute("DELETE FROM schedules WHERE schedule_id = CAST(:s AS uuid)", s=schedule_id)
        uow.emit(ev.ScheduleChanged(schedule_id=schedule_id, name=row["name"], deleted=True),
                 f"schedule/{schedule_id}")


def grant_event(g: dict, revoked: bool | None = None) -> ev.GrantChanged:
    event = ev.GrantChanged(grant_id=g["grant_id"], user_id=g["user_id"], group_id=g["group_id"],
                            door_id=g["door_id"], schedule_id=g["schedule_id"],
                            revoked=g["revoked"] if revoked is None else revoked)
    if g["valid_from"] is not None:
        event.valid_from.FromDatetime(g["valid_from"])
    if g["valid_until"] is not None:
        event.valid_until.FromDatetime(g["valid_until"])
    return event


GRANT_REFERENCES = {  # foreign key -> the request field it checks
    "grants_user_id_fkey": "user_id", "grants_group_id_fkey": "group_id",
    "grants_door_id_fkey": "door_id", "grants_schedule_id_fkey": "schedule_id",
}


class Access:
    """Credentials, grants and the authoritative explanation."""

    def __init__(self, db: Database, hmac_key: bytes) -> None:
        self.db = db
        self.hmac_key = hmac_key

    async def issue_credential(self, uow: UnitOfWork, user_id: str, kind: int, secret: str, label: str) -> dict:
        await get(uow, "users", user_id, field="user_id")
        digest = secrets.hash_secret(self.hmac_key, kind, secret)
        if await uow.row("SELECT 1 FROM credentials WHERE kind = :k AND secret_hash = :h AND NOT revoked",
                         k=kind, h=digest):
            raise AlreadyExists("an active credential of this kind with this secret already exists")
        cred_id = new_id()
        await uow.execute("INSERT INTO credentials (credential_id, user_id, kind, secret_hash, label, create_time) "
                          "VALUES (CAST(:c AS uuid), CAST(:u AS uuid), :k, :h, :l, :t)",
                          c=cred_id, u=user_id, k=kind, h=digest, l=label, t=now())
        row = await get(uow, "credentials", cred_id)
        uow.emit(ev.CredentialChanged(credential_id=cred_id, user_id=user_id, kind=kind, secret_hash=digest,
                                      state=ev.CREDENTIAL_STATE_ACTIVE, label=label), f"credential/{cred_id}")
        return row

    async def revoke_credential(self, uow: UnitOfWork, credential_id: str) -> dict:
        row = await get(uow, "credentials", credential_id, lock=True)
        if row["revoked"]:
            raise FailedPrecondition(f"credential {credential_id} is already revoked")
        digest = (await uow.row("UPDATE credentials SET revoked = true, revoke_time = :t "
                                "WHERE credential_id = CAST(:c AS uuid) RETURNING secret_hash",
                                t=now(), c=credential_id))["secret_hash"]
        uow.emit(ev.CredentialChanged(credential_id=credential_id, user_id=row["user_id"], kind=row["kind"],
                                      secret_hash=bytes(digest), state=ev.CREDENTIAL_STATE_REVOKED,
                                      label=row["label"]), f"credential/{credential_id}")
        return await get(uow, "credentials", credential_id)

    async def grant(self, uow: UnitOfWork, user_id: str, group_id: str, door_id: str,
                    valid_from: dt.datetime | None, valid_until: dt.datetime | None, schedule_id: str) -> dict:
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidArgument("grant.valid_until", "must be after valid_from")
        # The foreign keys check that the user (or group), door and schedule exist: no
        # lookups first, one round trip fewer per reference under the revision lock.
        try:
            row = await uow.row(
                "INSERT INTO grants (grant_id, user_id, group_id, door_id, valid_from, valid_until, schedule_id, "
                "create_time) VALUES (CAST(:g AS uuid), CAST(NULLIF(:u, '') AS uuid), "
                "CAST(NULLIF(:gr, '') AS uuid), CAST(:d AS uuid), :vf, :vu, CAST(NULLIF(:s, '') AS uuid), :t) "
                f"RETURNING {GRANT_COLS}",
                g=new_id(), u=user_id, gr=group_id, d=door_id, vf=valid_from, vu=valid_until, s=schedule_id,
                t=now())
        except MissingReference as exc:
            field = GRANT_REFERENCES.get(exc.constraint)
            if field is None:
                raise
            value = {"user_id": user_id, "group_id": group_id, "door_id": door_id, "schedule_id": schedule_id}
            raise NotFound(f"grant.{field} {value[field]} not found") from None
        grant_id = row["grant_id"]
        uow.emit(grant_event(row), f"grant/{grant_id}")
        await effective.publish_pairs(uow, await effective.pairs_of_grant(uow, row))
        return row

    async def revoke(self, uow: UnitOfWork, grant_id: str) -> dict:
        row = await uow.row(f"UPDATE grants SET revoked = true, revoke_time = :t WHERE grant_id = CAST(:g AS uuid) "
                            f"AND NOT revoked RETURNING {GRANT_COLS}", t=now(), g=grant_id)
        if row is None:
            await get(uow, "grants", grant_id)  # NOT_FOUND if it does not exist
            raise FailedPrecondition(f"grant {grant_id} is already revoked")
        uow.emit(grant_event(row), f"grant/{grant_id}")
        await effective.publish_pairs(uow, await effective.pairs_of_grant(uow, row))
        return row

    async def explain(self, user_id: str, door_id: str, at: dt.datetime) -> tuple[Verdict, int]:
        async with self.db.read() as uow:
            # One snapshot for the data and the revision it corresponds to.
            await uow.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            revision = (await uow.row("SELECT revision FROM revision_counter WHERE id = 1"))["revision"]
            await get(uow, "users", user_id, field="user_id")
            await get(uow, "doors", door_id, field="door_id")
            access = (await effective.pair_access(uow, {(door_id, user_id)}))[(door_id, user_id)]
        return evaluate(access, at), revision
