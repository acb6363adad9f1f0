"""Effective access, computed on write.

A change that can alter who may open which door names the (door, user) pairs
it touches; `publish_pairs` then reads, inside the same transaction, the
complete rules for each pair and emits one `AccessChanged` per pair, versioned
by the revision. The read side keeps the highest version per pair, so
duplicates and reordering are harmless. `pair_access` is also what
`ExplainAccess` evaluates: the oracle and the events share one reading.
"""

from __future__ import annotations

from collections import defaultdict

from access_rules.codec import to_event
from access_rules.rules import PairAccess, Rule
from services.permissions.domain import AccessFacts, Grant, Pair
from services.permissions.ports import PermissionsStore, UnitOfWork


def assemble(pairs: set[Pair], facts: AccessFacts) -> dict[Pair, PairAccess]:
    """Each pair's rules (ordered by grant, then group) and its user's and door's state."""
    rules: dict[Pair, list[Rule]] = defaultdict(list)
    for r in facts.rules:
        pair = (r.door_id, r.user_id)
        if pair in pairs:
            rules[pair].append(Rule(
                grant_id=r.grant_id, via_group_id=r.via_group_id, valid_from=r.valid_from,
                valid_until=r.valid_until, schedule_id=r.schedule_id,
                windows=tuple(facts.windows.get(r.schedule_id, ())),
            ))
    result = {}
    for door, user in pairs:
        state = facts.doors.get(door)
        result[(door, user)] = PairAccess(
            rules=tuple(sorted(rules[(door, user)], key=lambda x: (x.grant_id, x.via_group_id))),
            user_suspended=bool(facts.suspended.get(user, False)),
            door_lockdown=bool(state and state.lockdown),
            time_zone=state.time_zone if state else "UTC",
            door_max_view_staleness=state.max_view_staleness_ms / 1000 if state else 0.0,
        )
    return result


async def pair_access(store: PermissionsStore, pairs: set[Pair]) -> dict[Pair, PairAccess]:
    """The complete rules and state for each pair, as the store's transaction sees them."""
    if not pairs:
        return {}
    return assemble(pairs, await store.access_facts(pairs))


async def publish_pairs(uow: UnitOfWork, pairs: set[Pair]) -> None:
    access = await pair_access(uow.store, pairs)
    for (door, user), value in sorted(access.items()):
        uow.emit(to_event(door, user, value), f"access/{door}/{user}")


async def pairs_of_grants(store: PermissionsStore, grants: list[Grant]) -> set[Pair]:
    """The pairs the grants touch, all together: a batch publishes each pair once, with the state
    its whole transaction leaves (one `AccessChanged` per pair and revision)."""
    pairs = {(g.door_id, g.user_id) for g in grants if g.user_id}
    doors_of_group: dict[str, set[str]] = {}
    for g in grants:
        if g.group_id:
            doors_of_group.setdefault(g.group_id, set()).add(g.door_id)
    for group_id, doors in doors_of_group.items():
        members = await store.members(group_id)
        pairs |= {(door, user) for door in doors for user in members}
    return pairs


async def pairs_of_members(store: PermissionsStore, group_id: str, user_ids: list[str]) -> set[Pair]:
    if not user_ids:
        return set()
    doors = await store.doors_of_group(group_id)
    return {(door, user) for door in doors for user in user_ids}
