"""Effective access, computed on write.

A change that can alter who may open which door names the (door, user) pairs
it touches; `publish_pairs` then reads, inside the same transaction, the
complete rules for each pair and emits one `AccessChanged` per pair, versioned
by the revision. The read side keeps the highest version per pair, so
duplicates and reordering are harmless. `pair_access` is also what
`ExplainAccess` evaluates: the oracle and the events share one query.
"""

from __future__ import annotations

from collections import defaultdict

from latchkit.access_codec import to_event
from latchkit.access_rules import PairAccess, Rule, Window
from services.permissions.adapters.postgres import UnitOfWork

Pair = tuple[str, str]  # (door_id, user_id)

# The rules of the pairs (direct and through groups) and the state of their users
# and doors, in one round trip: every write that changes access runs this under
# the revision lock. `kind`: r = rule, u = user, d = door.
_ACCESS_SQL = """
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


async def pair_access(uow: UnitOfWork, pairs: set[Pair]) -> dict[Pair, PairAccess]:
    """The complete rules and state for each pair, as the current transaction sees them."""
    if not pairs:
        return {}
    doors = sorted({d for d, _ in pairs})
    users = sorted({u for _, u in pairs})
    everything = await uow.rows(_ACCESS_SQL, users=users, doors=doors)
    rows = [r for r in everything if r["kind"] == "r"]
    schedule_ids = sorted({r["schedule_id"] for r in rows if r["schedule_id"]})
    windows: dict[str, list[Window]] = defaultdict(list)
    if schedule_ids:
        for w in await uow.rows(
            "SELECT schedule_id::text AS s, day, start_minute, end_minute FROM schedule_windows "
            "WHERE schedule_id = ANY(CAST(:ids AS uuid[])) ORDER BY schedule_id, day, start_minute",
            ids=schedule_ids,
        ):
            windows[w["s"]].append(Window(w["day"], w["start_minute"], w["end_minute"]))
    suspended = {r["user_id"]: r["flag"] for r in everything if r["kind"] == "u"}
    door_state = {r["door_id"]: {"lockdown": r["flag"], "time_zone": r["time_zone"],
                                 "staleness_ms": r["staleness_ms"]}
                  for r in everything if r["kind"] == "d"}
    rules: dict[Pair, list[Rule]] = defaultdict(list)
    for r in rows:
        pair = (r["door_id"], r["user_id"])
        if pair in pairs:
            rules[pair].append(Rule(
                grant_id=r["grant_id"], via_group_id=r["via"], valid_from=r["valid_from"],
                valid_until=r["valid_until"], schedule_id=r["schedule_id"],
                windows=tuple(windows.get(r["schedule_id"], ())),
            ))
    result = {}
    for door, user in pairs:
        state = door_state.get(door)
        result[(door, user)] = PairAccess(
            rules=tuple(sorted(rules[(door, user)], key=lambda x: (x.grant_id, x.via_group_id))),
            user_suspended=bool(suspended.get(user, False)),
            door_lockdown=bool(state and state["lockdown"]),
            time_zone=state["time_zone"] if state else "UTC",
            door_max_view_staleness=state["staleness_ms"] / 1000 if state else 0.0,
        )
    return result


async def publish_pairs(uow: UnitOfWork, pairs: set[Pair]) -> None:
    access = await pair_access(uow, pairs)
    for (door, user), value in sorted(access.items()):
        uow.emit(to_event(door, user, value), f"access/{door}/{user}")


# ---- which pairs a change touches (call before the change for deletes) ----------

async def pairs_of_grant(uow: UnitOfWork, grant: dict) -> set[Pair]:
    if grant.get("user_id"):
        return {(str(grant["door_id"]), str(grant["user_id"]))}
    members = await uow.rows("SELECT user_id::text AS u FROM group_members WHERE group_id = CAST(:g AS uuid)",
                             g=str(grant["group_id"]))
    return {(str(grant["door_id"]), m["u"]) for m in members}


async def _pairs(uow: UnitOfWork, where_direct: str, where_group: str, **params) -> set[Pair]:
    rows = await uow.rows(
        f"SELECT door_id::text AS d, user_id::text AS u FROM grants g WHERE NOT revoked "
        f"AND user_id IS NOT NULL AND {where_direct} "
        f"UNION SELECT g.door_id::text, m.user_id::text FROM grants g "
        f"JOIN group_members m ON m.group_id = g.group_id WHERE NOT g.revoked AND {where_group}",
        **params,
    )
    return {(r["d"], r["u"]) for r in rows}


async def pairs_of_user(uow: UnitOfWork, user_id: str) -> set[Pair]:
    return await _pairs(uow, "g.user_id = CAST(:x AS uuid)", "m.user_id = CAST(:x AS uuid)", x=user_id)


async def pairs_of_door(uow: UnitOfWork, door_id: str) -> set[Pair]:
    return await _pairs(uow, "g.door_id = CAST(:x AS uuid)", "g.door_id = CAST(:x AS uuid)", x=door_id)


async def pairs_of_group(uow: UnitOfWork, group_id: str) -> set[Pair]:
    return await _pairs(uow, "false", "g.group_id = CAST(:x AS uuid)", x=group_id)


async def pairs_of_membership(uow: UnitOfWork, group_id: str, user_id: str) -> set[Pair]:
    rows = await uow.rows(
        "SELECT door_id::text AS d FROM grants WHERE NOT revoked AND group_id = CAST(:g AS uuid)", g=group_id)
    return {(r["d"], user_id) for r in rows}


async def pairs_of_schedule(uow: UnitOfWork, schedule_id: str) -> set[Pair]:
    return await _pairs(uow, "g.schedule_id = CAST(:x AS uuid)", "g.schedule_id = CAST(:x AS uuid)", x=schedule_id)
