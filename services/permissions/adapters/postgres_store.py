"""The permissions tables and the idempotency table in PostgreSQL (`ports.PermissionsStore`,
`ports.IdempotencyStore`), on the connection of one `PostgresUnitOfWork`.

Every write runs under the revision lock, so each statement here is paid by
every later writer: writes return their row (RETURNING) instead of reading it
again, and a grant's references are checked by its foreign keys.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from access_rules.rules import Window
from latchkit.errors import FailedPrecondition
from services.permissions.domain import (
    AccessFacts,
    Credential,
    Door,
    DoorState,
    Grant,
    Group,
    MissingReference,
    Pair,
    RuleFact,
    Schedule,
    User,
)
from services.permissions.ports import StoredResponse

if TYPE_CHECKING:
    from services.permissions.adapters.postgres import PostgresUnitOfWork

USER_COLS = ("user_id::text AS user_id, display_name, email, coalesce(external_id, '') AS external_id, "
             "suspended, create_time, update_time")
DOOR_COLS = "door_id::text AS door_id, name, site, time_zone, lockdown, max_view_staleness_ms, create_time, update_time"
GROUP_COLS = "group_id::text AS group_id, name, create_time, update_time"
SCHEDULE_COLS = "schedule_id::text AS schedule_id, name, create_time, update_time"
CRED_COLS = ("credential_id::text AS credential_id, user_id::text AS user_id, kind, label, revoked, create_time, "
             "revoke_time, secret_hash")
GRANT_COLS = ("grant_id::text AS grant_id, coalesce(user_id::text, '') AS user_id, "
              "coalesce(group_id::text, '') AS group_id, door_id::text AS door_id, valid_from, valid_until, "
              "coalesce(schedule_id::text, '') AS schedule_id, revoked, create_time, revoke_time")
AFTER = "(:after = '' OR {key} > CAST(NULLIF(:after, '') AS uuid))"

# The rules of the pairs (direct and through groups) and the state of their users
# and doors, in one round trip: every write that changes access runs this under
# the revision lock. `kind`: r = rule, u = user, d = door.
ACCESS_SQL = """
SELECT 'r' AS kind, g.grant_id::text AS grant_id, g.door_id::text AS door_id, g.user_id::text AS user_id,
       '' AS via, g.valid_from, g.valid_until, coalesce(g.schedule_id::text, '') AS schedule_id,
       false AS flag, '' AS time_zone, 0 AS staleness_ms
  FROM grants g
 WHERE NOT g.revoked AND g.user_id = ANY(CAST(:users AS uuid[])) AND g.door_id = ANY(CAST(:doors AS uuid[]))
UNION ALL
SELECT 'r', g.grant_id::text, g.door_id::text, m.user_id::text, g.group_id::text,
       g.valid_from, g.valid_until, coalesce(g.schedule_id::text, ''), false, '', 0
  FROM grants g JOIN group_members m ON m.group_id = g.group_id
 WHERE NOT g.revoked AND m.user_id = ANY(CAST(:users AS uuid[])) AND g.door_id = ANY(CAST(:doors AS uuid[]))
UNION ALL
SELECT 'u', '', '', user_id::text, '', NULL, NULL, '', suspended, '', 0
  FROM users WHERE user_id = ANY(CAST(:users AS uuid[]))
UNION ALL
SELECT 'd', '', door_id::text, '', '', NULL, NULL, '', lockdown, time_zone, max_view_staleness_ms
  FROM doors WHERE door_id = ANY(CAST(:doors AS uuid[]))
"""


# One new grant (GrantAccess, and any list of one): a plain insert whose foreign keys check the
# references, less than half the database time of the checked list statement below. A missing
# reference fails it with the foreign key that names the field (GRANT_REFERENCES).
INSERT_GRANT = (
    "INSERT INTO grants (grant_id, user_id, group_id, door_id, valid_from, valid_until, schedule_id, create_time) "
    "VALUES (CAST(:g AS uuid), CAST(NULLIF(:u, '') AS uuid), CAST(NULLIF(:gr, '') AS uuid), "
    "CAST(:d AS uuid), :vf, :vu, CAST(NULLIF(:s, '') AS uuid), :t) "
    f"RETURNING {GRANT_COLS}")
GRANT_REFERENCES = {f"grants_{field}_fkey": field for field in ("user_id", "group_id", "door_id", "schedule_id")}

# New grants, given as parallel arrays (one statement for a whole batch). Their references are
# checked in the same statement, through the primary keys: if any is missing, no row is inserted
# (and FIRST_MISSING_REFERENCE then names it); the foreign keys stay the last word.
GRANT_INPUT = """
input AS (
  SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS uuid[]), CAST(:groups AS uuid[]),
                       CAST(:doors AS uuid[]), CAST(:vf AS timestamptz[]), CAST(:vu AS timestamptz[]),
                       CAST(:schedules AS uuid[]), CAST(:ts AS timestamptz[]))
         WITH ORDINALITY AS t(grant_id, user_id, group_id, door_id, valid_from, valid_until, schedule_id, t, i)
), checked AS (
  SELECT input.*,
         CASE WHEN user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = input.user_id)
                   THEN 'user_id'
              WHEN group_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.group_id = input.group_id)
                   THEN 'group_id'
              WHEN NOT EXISTS (SELECT 1 FROM doors d WHERE d.door_id = input.door_id) THEN 'door_id'
              WHEN schedule_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM schedules s WHERE s.schedule_id = input.schedule_id)
                   THEN 'schedule_id'
         END AS missing
    FROM input
)"""
INSERT_GRANTS = f"""
WITH {GRANT_INPUT}
INSERT INTO grants (grant_id, user_id, group_id, door_id, valid_from, valid_until, schedule_id, create_time)
SELECT grant_id, user_id, group_id, door_id, valid_from, valid_until, schedule_id, t
  FROM checked WHERE NOT EXISTS (SELECT 1 FROM checked WHERE missing IS NOT NULL)
RETURNING {GRANT_COLS}
"""
FIRST_MISSING_REFERENCE = f"""
WITH {GRANT_INPUT}
SELECT i, missing AS field FROM checked WHERE missing IS NOT NULL ORDER BY i LIMIT 1
"""


def _in_order(wanted: list, rows: list[dict], key: str, make):
    """RETURNING rows in the order of the list that was written (PostgreSQL promises no order)."""
    by_key = {r[key]: r for r in rows}
    return [make(**by_key[getattr(w, key)]) for w in wanted]


class ForeignKeyViolation(FailedPrecondition):
    """A foreign key found nothing to point at (or a RESTRICT still pointing here)."""

    def __init__(self, constraint: str) -> None:
        super().__init__(f"the change conflicts with the current state ({constraint or 'a constraint'})")
        self.constraint = constraint


def _credential(row: dict) -> Credential:
    return Credential(**{**row, "secret_hash": bytes(row["secret_hash"])})


class PostgresPermissionsStore:
    def __init__(self, uow: PostgresUnitOfWork) -> None:
        self.uow = uow

    async def revision(self) -> int:
        row = await self.uow.row_required("SELECT revision FROM revision_counter WHERE id = 1")
        return row["revision"]

    async def _get(self, table: str, key: str, value: str, cols: str, lock: bool) -> dict | None:
        return await self.uow.row(f"SELECT {cols} FROM {table} WHERE {key} = CAST(:k AS uuid)"
                                  + (" FOR UPDATE" if lock else ""), k=value)

    async def _list(self, table: str, key: str, cols: str, after: str, limit: int, where: str = "true",
                    **params: Any) -> list[dict]:
        return await self.uow.rows(
            f"SELECT {cols} FROM {table} WHERE {where} AND {AFTER.format(key=key)} ORDER BY {key} LIMIT :n",
            after=after, n=limit, **params)

    async def _update(self, table: str, key: str, value: str, cols: str, changes: dict[str, Any],
                      at: dt.datetime) -> dict:
        sets = "".join(f"{k} = :{k}, " if k != "external_id" else "external_id = NULLIF(:external_id, ''), "
                       for k in changes)
        return await self.uow.row_required(
            f"UPDATE {table} SET {sets}update_time = :t WHERE {key} = CAST(:k AS uuid) RETURNING {cols}",
            k=value, t=at, **changes)

    # ---- users -----------------------------------------------------------------
    async def get_user(self, user_id: str, *, lock: bool = False) -> User | None:
        row = await self._get("users", "user_id", user_id, USER_COLS, lock)
        return User(**row) if row else None

    async def external_id_taken(self, external_id: str, *, other_than: str = "") -> bool:
        return bool(await self.uow.row("SELECT 1 FROM users WHERE external_id = :e AND user_id::text <> :u",
                                       e=external_id, u=other_than))

    async def taken_external_ids(self, external_ids: list[str]) -> set[str]:
        wanted = [x for x in external_ids if x]
        if not wanted:
            return set()
        rows = await self.uow.rows("SELECT external_id AS x FROM users WHERE external_id = ANY(CAST(:xs AS text[]))",
                                   xs=wanted)
        return {r["x"] for r in rows}

    async def insert_users(self, users: list[User]) -> list[User]:
        # One statement for the whole list: a batch of 1,000 costs one round trip under the lock.
        rows = await self.uow.rows(
            "INSERT INTO users (user_id, display_name, email, external_id, create_time, update_time) "
            "SELECT id, n, e, NULLIF(x, ''), t, t FROM unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), "
            "CAST(:emails AS text[]), CAST(:xs AS text[]), CAST(:ts AS timestamptz[])) AS i(id, n, e, x, t) "
            f"RETURNING {USER_COLS}",
            ids=[u.user_id for u in users], names=[u.display_name for u in users], emails=[u.email for u in users],
            xs=[u.external_id for u in users], ts=[u.create_time for u in users])
        return _in_order(users, rows, "user_id", User)

    async def existing_users(self, user_ids: list[str]) -> set[str]:
        rows = await self.uow.rows("SELECT user_id::text AS u FROM users WHERE user_id = ANY(CAST(:ids AS uuid[]))",
                                   ids=user_ids)
        return {r["u"] for r in rows}

    async def update_user(self, user_id: str, changes: dict[str, Any], at: dt.datetime) -> User:
        return User(**await self._update("users", "user_id", user_id, USER_COLS, changes, at))

    async def delete_user(self, user_id: str) -> None:
        await self.uow.execute("DELETE FROM users WHERE user_id = CAST(:u AS uuid)", u=user_id)

    async def list_users(self, after: str, limit: int, *, suspended: bool | None = None) -> list[User]:
        where = "true" if suspended is None else "suspended = :s"
        return [User(**r) for r in await self._list("users", "user_id", USER_COLS, after, limit, where,
                                                      s=suspended)]

    # ---- doors -----------------------------------------------------------------
    async def get_door(self, door_id: str, *, lock: bool = False) -> Door | None:
        row = await self._get("doors", "door_id", door_id, DOOR_COLS, lock)
        return Door(**row) if row else None

    async def insert_door(self, door_id: str, name: str, site: str, time_zone: str, lockdown: bool,
                          max_view_staleness_ms: int, at: dt.datetime) -> Door:
        return Door(**await self.uow.row_required(
            "INSERT INTO doors (door_id, name, site, time_zone, lockdown, max_view_staleness_ms, create_time, "
            f"update_time) VALUES (CAST(:id AS uuid), :n, :s, :z, :l, :m, :t, :t) RETURNING {DOOR_COLS}",
            id=door_id, n=name, s=site, z=time_zone, l=lockdown, m=max_view_staleness_ms, t=at))

    async def update_door(self, door_id: str, changes: dict[str, Any], at: dt.datetime) -> Door:
        return Door(**await self._update("doors", "door_id", door_id, DOOR_COLS, changes, at))

    async def delete_door(self, door_id: str) -> None:
        await self.uow.execute("DELETE FROM doors WHERE door_id = CAST(:d AS uuid)", d=door_id)

    async def list_doors(self, after: str, limit: int, *, site: str = "") -> list[Door]:
        return [Door(**r) for r in await self._list("doors", "door_id", DOOR_COLS, after, limit,
                                                      "(:site = '' OR site = :site)", site=site)]

    # ---- groups ----------------------------------------------------------------
    async def get_group(self, group_id: str, *, lock: bool = False) -> Group | None:
        row = await self._get("groups", "group_id", group_id, GROUP_COLS, lock)
        return Group(**row) if row else None

    async def group_name_taken(self, name: str, *, other_than: str = "") -> bool:
        return bool(await self.uow.row("SELECT 1 FROM groups WHERE name = :n AND group_id::text <> :g",
                                       n=name, g=other_than))

    async def insert_group(self, group_id: str, name: str, at: dt.datetime) -> Group:
        return Group(**await self.uow.row_required(
            "INSERT INTO groups (group_id, name, create_time, update_time) "
            f"VALUES (CAST(:id AS uuid), :n, :t, :t) RETURNING {GROUP_COLS}", id=group_id, n=name, t=at))

    async def rename_group(self, group_id: str, name: str, at: dt.datetime) -> Group:
        return Group(**await self._update("groups", "group_id", group_id, GROUP_COLS, {"name": name}, at))

    async def delete_group(self, group_id: str) -> None:
        await self.uow.execute("DELETE FROM groups WHERE group_id = CAST(:g AS uuid)", g=group_id)

    async def list_groups(self, after: str, limit: int) -> list[Group]:
        return [Group(**r) for r in await self._list("groups", "group_id", GROUP_COLS, after, limit)]

    async def add_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        rows = await self.uow.rows(
            "INSERT INTO group_members SELECT CAST(:g AS uuid), u FROM unnest(CAST(:us AS uuid[])) AS t(u) "
            "ON CONFLICT DO NOTHING RETURNING user_id::text AS u", g=group_id, us=user_ids)
        added = {r["u"] for r in rows}
        return [u for u in user_ids if u in added]

    async def remove_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        rows = await self.uow.rows(
            "DELETE FROM group_members WHERE group_id = CAST(:g AS uuid) AND user_id = ANY(CAST(:us AS uuid[])) "
            "RETURNING user_id::text AS u", g=group_id, us=user_ids)
        removed = {r["u"] for r in rows}
        return [u for u in user_ids if u in removed]

    async def members(self, group_id: str) -> list[str]:
        rows = await self.uow.rows("SELECT user_id::text AS u FROM group_members WHERE group_id = CAST(:g AS uuid)",
                                   g=group_id)
        return [r["u"] for r in rows]

    async def list_members(self, group_id: str, after: str, limit: int) -> list[User]:
        return [User(**r) for r in await self._list(
            "users", "user_id", USER_COLS, after, limit,
            "user_id IN (SELECT user_id FROM group_members WHERE group_id = CAST(:g AS uuid))", g=group_id)]

    # ---- schedules -------------------------------------------------------------
    async def _with_windows(self, rows: list[dict]) -> list[Schedule]:
        if not rows:
            return []
        windows: dict[str, list[Window]] = defaultdict(list)
        for w in await self.uow.rows(
                "SELECT schedule_id::text AS s, day, start_minute, end_minute FROM schedule_windows "
                "WHERE schedule_id = ANY(CAST(:ids AS uuid[])) ORDER BY schedule_id, day, start_minute",
                ids=[r["schedule_id"] for r in rows]):
            windows[w["s"]].append(Window(w["day"], w["start_minute"], w["end_minute"]))
        return [Schedule(**r, windows=tuple(windows[r["schedule_id"]])) for r in rows]

    async def get_schedule(self, schedule_id: str, *, lock: bool = False) -> Schedule | None:
        row = await self._get("schedules", "schedule_id", schedule_id, SCHEDULE_COLS, lock)
        return (await self._with_windows([row]))[0] if row else None

    async def _write_windows(self, schedule_id: str, windows: list[Window]) -> None:
        await self.uow.execute("DELETE FROM schedule_windows WHERE schedule_id = CAST(:s AS uuid)", s=schedule_id)
        await self.uow.execute_many(
            "INSERT INTO schedule_windows VALUES (CAST(:s AS uuid), :d, :a, :b)",
            [{"s": schedule_id, "d": w.day, "a": w.start_minute, "b": w.end_minute} for w in windows])

    async def insert_schedule(self, schedule_id: str, name: str, windows: list[Window],
                              at: dt.datetime) -> Schedule:
        row = await self.uow.row_required(f"INSERT INTO schedules VALUES (CAST(:id AS uuid), :n, :t, :t) "
                                          f"RETURNING {SCHEDULE_COLS}", id=schedule_id, n=name, t=at)
        await self._write_windows(schedule_id, windows)
        return Schedule(**row, windows=tuple(sorted(windows, key=lambda w: (w.day, w.start_minute))))

    async def update_schedule(self, schedule_id: str, name: str | None, windows: list[Window] | None,
                              at: dt.datetime) -> Schedule:
        if windows is not None:
            await self._write_windows(schedule_id, windows)
        row = await self._update("schedules", "schedule_id", schedule_id, SCHEDULE_COLS,
                                 {} if name is None else {"name": name}, at)
        return (await self._with_windows([row]))[0]

    async def schedule_in_use(self, schedule_id: str) -> bool:
        return bool(await self.uow.row("SELECT 1 FROM grants WHERE schedule_id = CAST(:s AS uuid) AND NOT revoked",
                                       s=schedule_id))

    async def delete_schedule(self, schedule_id: str) -> None:
        await self.uow.execute("UPDATE grants SET schedule_id = NULL WHERE schedule_id = CAST(:s AS uuid)",
                               s=schedule_id)
        await self.uow.execute("DELETE FROM schedules WHERE schedule_id = CAST(:s AS uuid)", s=schedule_id)

    async def list_schedules(self, after: str, limit: int) -> list[Schedule]:
        return await self._with_windows(await self._list("schedules", "schedule_id", SCHEDULE_COLS, after, limit))

    # ---- credentials -----------------------------------------------------------
    async def get_credential(self, credential_id: str, *, lock: bool = False) -> Credential | None:
        row = await self._get("credentials", "credential_id", credential_id, CRED_COLS, lock)
        return _credential(row) if row else None

    async def active_credential_exists(self, kind: int, secret_hash: bytes) -> bool:
        return bool(await self.uow.row("SELECT 1 FROM credentials WHERE kind = :k AND secret_hash = :h "
                                       "AND NOT revoked", k=kind, h=secret_hash))

    async def insert_credential(self, credential_id: str, user_id: str, kind: int, secret_hash: bytes,
                                label: str, at: dt.datetime) -> Credential:
        return _credential(await self.uow.row_required(
            "INSERT INTO credentials (credential_id, user_id, kind, secret_hash, label, create_time) "
            f"VALUES (CAST(:c AS uuid), CAST(:u AS uuid), :k, :h, :l, :t) RETURNING {CRED_COLS}",
            c=credential_id, u=user_id, k=kind, h=secret_hash, l=label, t=at))

    async def revoke_credential(self, credential_id: str, at: dt.datetime) -> Credential:
        return _credential(await self.uow.row_required(
            "UPDATE credentials SET revoked = true, revoke_time = :t WHERE credential_id = CAST(:c AS uuid) "
            f"RETURNING {CRED_COLS}", t=at, c=credential_id))

    async def credentials_of_user(self, user_id: str) -> list[Credential]:
        return [_credential(r) for r in await self.uow.rows(
            f"SELECT {CRED_COLS} FROM credentials WHERE user_id = CAST(:u AS uuid)", u=user_id)]

    async def list_credentials(self, after: str, limit: int, *, user_id: str = "") -> list[Credential]:
        return [_credential(r) for r in await self._list(
            "credentials", "credential_id", CRED_COLS, after, limit,
            "(:u = '' OR user_id = CAST(NULLIF(:u, '') AS uuid))", u=user_id)]

    # ---- grants ----------------------------------------------------------------
    async def get_grant(self, grant_id: str) -> Grant | None:
        row = await self._get("grants", "grant_id", grant_id, GRANT_COLS, False)
        return Grant(**row) if row else None

    async def insert_grants(self, grants: list[Grant]) -> list[Grant]:
        if len(grants) == 1:
            return [await self._insert_grant(grants[0])]
        params = {
            "ids": [g.grant_id for g in grants], "users": [g.user_id or None for g in grants],
            "groups": [g.group_id or None for g in grants], "doors": [g.door_id for g in grants],
            "vf": [g.valid_from for g in grants], "vu": [g.valid_until for g in grants],
            "schedules": [g.schedule_id or None for g in grants], "ts": [g.create_time for g in grants],
        }
        rows = await self.uow.rows(INSERT_GRANTS, **params)
        if len(rows) < len(grants):
            # Nothing was inserted: a reference is missing. Only now ask which (the error path).
            first = await self.uow.row_required(FIRST_MISSING_REFERENCE, **params)
            raise MissingReference(first["field"], first["i"] - 1)
        return _in_order(grants, rows, "grant_id", Grant)

    async def _insert_grant(self, g: Grant) -> Grant:
        try:
            row = await self.uow.row_required(INSERT_GRANT, g=g.grant_id, u=g.user_id, gr=g.group_id, d=g.door_id,
                                              vf=g.valid_from, vu=g.valid_until, s=g.schedule_id, t=g.create_time)
        except ForeignKeyViolation as exc:
            field = GRANT_REFERENCES.get(exc.constraint)
            if field is None:
                raise
            raise MissingReference(field, 0) from None
        return Grant(**row)

    async def revoke_grants(self, grant_ids: list[str], at: dt.datetime) -> list[Grant]:
        rows = await self.uow.rows(f"UPDATE grants SET revoked = true, revoke_time = :t "
                                   f"WHERE grant_id = ANY(CAST(:ids AS uuid[])) AND NOT revoked RETURNING {GRANT_COLS}",
                                   t=at, ids=grant_ids)
        found = {r["grant_id"]: Grant(**r) for r in rows}
        return [found[g] for g in grant_ids if g in found]

    async def active_grants(self, *, user_id: str = "", door_id: str = "", group_id: str = "") -> list[Grant]:
        column, value = next((c, v) for c, v in (("user_id", user_id), ("door_id", door_id),
                                                 ("group_id", group_id)) if v)
        return [Grant(**r) for r in await self.uow.rows(
            f"SELECT {GRANT_COLS} FROM grants WHERE {column} = CAST(:x AS uuid) AND NOT revoked", x=value)]

    async def list_grants(self, after: str, limit: int, *, user_id: str = "", group_id: str = "",
                          door_id: str = "", include_revoked: bool = False) -> list[Grant]:
        filters = {"user_id": user_id, "group_id": group_id, "door_id": door_id}
        where = " AND ".join(f"(:{k} = '' OR {k} = CAST(NULLIF(:{k}, '') AS uuid))" for k in filters)
        where += "" if include_revoked else " AND NOT revoked"
        return [Grant(**r) for r in await self._list("grants", "grant_id", GRANT_COLS, after, limit, where,
                                                       **filters)]

    # ---- effective access --------------------------------------------------------
    async def _pairs(self, where_direct: str, where_group: str, **params: Any) -> set[Pair]:
        rows = await self.uow.rows(
            f"SELECT door_id::text AS d, user_id::text AS u FROM grants g WHERE NOT revoked "
            f"AND user_id IS NOT NULL AND {where_direct} "
            f"UNION SELECT g.door_id::text, m.user_id::text FROM grants g "
            f"JOIN group_members m ON m.group_id = g.group_id WHERE NOT g.revoked AND {where_group}",
            **params)
        return {(r["d"], r["u"]) for r in rows}

    async def pairs_of_user(self, user_id: str) -> set[Pair]:
        return await self._pairs("g.user_id = CAST(:x AS uuid)", "m.user_id = CAST(:x AS uuid)", x=user_id)

    async def all_pairs(self) -> set[Pair]:
        return await self._pairs("true", "true")

    async def all_credentials(self) -> list[Credential]:
        return [_credential(r) for r in await self.uow.rows(f"SELECT {CRED_COLS} FROM credentials ORDER BY credential_id")]

    async def pairs_of_door(self, door_id: str) -> set[Pair]:
        return await self._pairs("g.door_id = CAST(:x AS uuid)", "g.door_id = CAST(:x AS uuid)", x=door_id)

    async def pairs_of_group(self, group_id: str) -> set[Pair]:
        return await self._pairs("false", "g.group_id = CAST(:x AS uuid)", x=group_id)

    async def pairs_of_schedule(self, schedule_id: str) -> set[Pair]:
        return await self._pairs("g.schedule_id = CAST(:x AS uuid)", "g.schedule_id = CAST(:x AS uuid)",
                                 x=schedule_id)

    async def doors_of_group(self, group_id: str) -> list[str]:
        rows = await self.uow.rows(
            "SELECT door_id::text AS d FROM grants WHERE NOT revoked AND group_id = CAST(:g AS uuid)", g=group_id)
        return [r["d"] for r in rows]

    async def access_facts(self, pairs: set[Pair]) -> AccessFacts:
        facts = AccessFacts()
        everything = await self.uow.rows(ACCESS_SQL, users=sorted({u for _, u in pairs}),
                                         doors=sorted({d for d, _ in pairs}))
        for r in everything:
            if r["kind"] == "r":
                facts.rules.append(RuleFact(r["grant_id"], r["door_id"], r["user_id"], r["via"], r["valid_from"],
                                            r["valid_until"], r["schedule_id"]))
            elif r["kind"] == "u":
                facts.suspended[r["user_id"]] = r["flag"]
            else:
                facts.doors[r["door_id"]] = DoorState(r["flag"], r["time_zone"], r["staleness_ms"])
        schedule_ids = sorted({r.schedule_id for r in facts.rules if r.schedule_id})
        if schedule_ids:
            for w in await self.uow.rows(
                    "SELECT schedule_id::text AS s, day, start_minute, end_minute FROM schedule_windows "
                    "WHERE schedule_id = ANY(CAST(:ids AS uuid[])) ORDER BY schedule_id, day, start_minute",
                    ids=schedule_ids):
                facts.windows.setdefault(w["s"], []).append(Window(w["day"], w["start_minute"], w["end_minute"]))
        return facts


class PostgresIdempotencyStore:
    def __init__(self, uow: PostgresUnitOfWork) -> None:
        self.uow = uow

    async def find(self, caller: str, request_id: str) -> StoredResponse | None:
        row = await self.uow.row("SELECT method, response, request_hash FROM idempotency "
                                 "WHERE caller = :c AND request_id = :r", c=caller, r=request_id)
        if row is None:
            return None
        stored_hash = row["request_hash"]
        return StoredResponse(row["method"], bytes(row["response"]),
                              None if stored_hash is None else bytes(stored_hash))

    async def save(self, caller: str, request_id: str, method: str, response: bytes,
                   request_hash: bytes) -> None:
        await self.uow.execute("INSERT INTO idempotency (caller, request_id, method, response, request_hash) "
                               "VALUES (:c, :r, :m, :b, :h)", c=caller, r=request_id, m=method, b=response,
                               h=request_hash)
