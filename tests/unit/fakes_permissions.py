"""In-memory adapters of `services.permissions.ports` for the use-case unit tests.

A write works on a copy of the state and commits it (with the next revision
and its events) only when it ends without an error, was not cancelled and
emitted something, as the PostgreSQL unit of work does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from access_rules.rules import Window
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
from services.permissions.ports import Committed, StoredResponse

T = TypeVar("T")
KEY = b"k" * 32
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday
UNKNOWN = "00000000-0000-4000-8000-000000000000"


class Ids:
    """Ids in creation order, so pages and events read predictably."""

    def __init__(self) -> None:
        self.n = itertools.count(1)

    def __call__(self) -> str:
        return f"00000000-0000-4000-8000-{next(self.n):012d}"


@dataclass
class State:
    revision: int = 0
    users: dict[str, User] = field(default_factory=dict)
    doors: dict[str, Door] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    credentials: dict[str, Credential] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], StoredResponse] = field(default_factory=dict)
    outbox: list[tuple[int, int, Any, str]] = field(default_factory=list)
    """(revision, index in the revision, event, aggregate key) of every committed event."""


def _page(rows: dict[str, Any], after: str, limit: int, keep=lambda row: True) -> list:
    return [rows[k] for k in sorted(rows) if k > after and keep(rows[k])][:limit]


class FakeStore:
    def __init__(self, state: State) -> None:
        self.s = state

    async def revision(self) -> int:
        return self.s.revision

    # users
    async def get_user(self, user_id: str, *, lock: bool = False) -> User | None:
        return self.s.users.get(user_id)

    async def external_id_taken(self, external_id: str, *, other_than: str = "") -> bool:
        return any(u.external_id == external_id and u.user_id != other_than for u in self.s.users.values())

    async def taken_external_ids(self, external_ids: list[str]) -> set[str]:
        return {u.external_id for u in self.s.users.values() if u.external_id and u.external_id in external_ids}

    async def insert_users(self, users: list[User]) -> list[User]:
        for u in users:
            assert u.user_id not in self.s.users and not await self.taken_external_ids([u.external_id])
            self.s.users[u.user_id] = u
        return list(users)

    async def existing_users(self, user_ids: list[str]) -> set[str]:
        return {u for u in user_ids if u in self.s.users}

    async def update_user(self, user_id: str, changes: dict[str, Any], at: dt.datetime) -> User:
        self.s.users[user_id] = dataclasses.replace(self.s.users[user_id], **changes, update_time=at)
        return self.s.users[user_id]

    async def delete_user(self, user_id: str) -> None:
        del self.s.users[user_id]
        self.s.credentials = {k: c for k, c in self.s.credentials.items() if c.user_id != user_id}
        self.s.grants = {k: g for k, g in self.s.grants.items() if g.user_id != user_id}
        self.s.members = {(g, u) for g, u in self.s.members if u != user_id}

    async def list_users(self, after: str, limit: int, *, suspended: bool | None = None) -> list[User]:
        return _page(self.s.users, after, limit, lambda u: suspended is None or u.suspended == suspended)

    # doors
    async def get_door(self, door_id: str, *, lock: bool = False) -> Door | None:
        return self.s.doors.get(door_id)

    async def insert_door(self, door_id, name, site, time_zone, lockdown, max_view_staleness_ms, at) -> Door:
        self.s.doors[door_id] = Door(door_id, name, site, time_zone, lockdown, max_view_staleness_ms, at, at)
        return self.s.doors[door_id]

    async def update_door(self, door_id: str, changes: dict[str, Any], at: dt.datetime) -> Door:
        self.s.doors[door_id] = dataclasses.replace(self.s.doors[door_id], **changes, update_time=at)
        return self.s.doors[door_id]

    async def delete_door(self, door_id: str) -> None:
        del self.s.doors[door_id]
        self.s.grants = {k: g for k, g in self.s.grants.items() if g.door_id != door_id}

    async def list_doors(self, after: str, limit: int, *, site: str = "") -> list[Door]:
        return _page(self.s.doors, after, limit, lambda d: not site or d.site == site)

    # groups
    async def get_group(self, group_id: str, *, lock: bool = False) -> Group | None:
        return self.s.groups.get(group_id)

    async def group_name_taken(self, name: str, *, other_than: str = "") -> bool:
        return any(g.name == name and g.group_id != other_than for g in self.s.groups.values())

    async def insert_group(self, group_id: str, name: str, at: dt.datetime) -> Group:
        self.s.groups[group_id] = Group(group_id, name, at, at)
        return self.s.groups[group_id]

    async def rename_group(self, group_id: str, name: str, at: dt.datetime) -> Group:
        self.s.groups[group_id] = dataclasses.replace(self.s.groups[group_id], name=name, update_time=at)
        return self.s.groups[group_id]

    async def delete_group(self, group_id: str) -> None:
        del self.s.groups[group_id]
        self.s.grants = {k: g for k, g in self.s.grants.items() if g.group_id != group_id}
        self.s.members = {(g, u) for g, u in self.s.members if g != group_id}

    async def list_groups(self, after: str, limit: int) -> list[Group]:
        return _page(self.s.groups, after, limit)

    async def add_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        added = [u for u in user_ids if (group_id, u) not in self.s.members]
        self.s.members |= {(group_id, u) for u in added}
        return added

    async def remove_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        removed = [u for u in user_ids if (group_id, u) in self.s.members]
        self.s.members -= {(group_id, u) for u in removed}
        return removed

    async def members(self, group_id: str) -> list[str]:
        return sorted(u for g, u in self.s.members if g == group_id)

    async def list_members(self, group_id: str, after: str, limit: int) -> list[User]:
        return _page(self.s.users, after, limit, lambda u: (group_id, u.user_id) in self.s.members)

    # schedules
    async def get_schedule(self, schedule_id: str, *, lock: bool = False) -> Schedule | None:
        return self.s.schedules.get(schedule_id)

    async def insert_schedule(self, schedule_id: str, name: str, windows: list[Window], at: dt.datetime) -> Schedule:
        self.s.schedules[schedule_id] = Schedule(schedule_id, name, at, at, tuple(windows))
        return self.s.schedules[schedule_id]

    async def update_schedule(self, schedule_id, name, windows, at) -> Schedule:
        changes: dict[str, Any] = {"update_time": at}
        if name is not None:
            changes["name"] = name
        if windows is not None:
            changes["windows"] = tuple(windows)
        self.s.schedules[schedule_id] = dataclasses.replace(self.s.schedules[schedule_id], **changes)
        return self.s.schedules[schedule_id]

    async def schedule_in_use(self, schedule_id: str) -> bool:
        return any(g.schedule_id == schedule_id and not g.revoked for g in self.s.grants.values())

    async def delete_schedule(self, schedule_id: str) -> None:
        del self.s.schedules[schedule_id]
        for k, g in list(self.s.grants.items()):
            if g.schedule_id == schedule_id:
                self.s.grants[k] = dataclasses.replace(g, schedule_id="")

    async def list_schedules(self, after: str, limit: int) -> list[Schedule]:
        return _page(self.s.schedules, after, limit)

    # credentials
    async def get_credential(self, credential_id: str, *, lock: bool = False) -> Credential | None:
        return self.s.credentials.get(credential_id)

    async def active_credential_exists(self, kind: int, secret_hash: bytes) -> bool:
        return any(c.kind == kind and c.secret_hash == secret_hash and not c.revoked
                   for c in self.s.credentials.values())

    async def insert_credential(self, credential_id, user_id, kind, secret_hash, label, at) -> Credential:
        self.s.credentials[credential_id] = Credential(credential_id, user_id, kind, label, False, at, None,
                                                       secret_hash)
        return self.s.credentials[credential_id]

    async def revoke_credential(self, credential_id: str, at: dt.datetime) -> Credential:
        c = dataclasses.replace(self.s.credentials[credential_id], revoked=True, revoke_time=at)
        self.s.credentials[credential_id] = c
        return c

    async def credentials_of_user(self, user_id: str) -> list[Credential]:
        return [c for c in self.s.credentials.values() if c.user_id == user_id]

    async def list_credentials(self, after: str, limit: int, *, user_id: str = "") -> list[Credential]:
        return _page(self.s.credentials, after, limit, lambda c: not user_id or c.user_id == user_id)

    # grants
    async def get_grant(self, grant_id: str) -> Grant | None:
        return self.s.grants.get(grant_id)

    async def insert_grants(self, grants: list[Grant]) -> list[Grant]:
        for index, g in enumerate(grants):
            for name, value, table in (("user_id", g.user_id, self.s.users), ("group_id", g.group_id, self.s.groups),
                                       ("door_id", g.door_id, self.s.doors),
                                       ("schedule_id", g.schedule_id, self.s.schedules)):
                if value and value not in table:
                    raise MissingReference(name, index)
        self.s.grants.update({g.grant_id: g for g in grants})
        return list(grants)

    async def revoke_grants(self, grant_ids: list[str], at: dt.datetime) -> list[Grant]:
        revoked = []
        for grant_id in grant_ids:
            g = self.s.grants.get(grant_id)
            if g is not None and not g.revoked:
                self.s.grants[grant_id] = dataclasses.replace(g, revoked=True, revoke_time=at)
                revoked.append(self.s.grants[grant_id])
        return revoked

    async def active_grants(self, *, user_id: str = "", door_id: str = "", group_id: str = "") -> list[Grant]:
        return [g for g in self.s.grants.values() if not g.revoked and (
            (user_id and g.user_id == user_id) or (door_id and g.door_id == door_id)
            or (group_id and g.group_id == group_id))]

    async def list_grants(self, after, limit, *, user_id="", group_id="", door_id="",
                          include_revoked=False) -> list[Grant]:
        return _page(self.s.grants, after, limit, lambda g: (include_revoked or not g.revoked) and all(
            not want or want == have for want, have in ((user_id, g.user_id), (group_id, g.group_id),
                                                        (door_id, g.door_id))))

    # effective access
    def _rule_pairs(self) -> list[tuple[Pair, Grant, str]]:
        """(pair, grant, via group) for every active grant, group grants once per member."""
        out = []
        for g in self.s.grants.values():
            if g.revoked:
                continue
            if g.user_id:
                out.append(((g.door_id, g.user_id), g, ""))
            else:
                out += [((g.door_id, u), g, g.group_id) for grp, u in self.s.members if grp == g.group_id]
        return out

    async def pairs_of_user(self, user_id: str) -> set[Pair]:
        return {p for p, _, _ in self._rule_pairs() if p[1] == user_id}

    async def all_pairs(self) -> set[Pair]:
        return {p for p, _, _ in self._rule_pairs()}

    async def all_credentials(self) -> list[Credential]:
        return sorted(self.s.credentials.values(), key=lambda c: c.credential_id)

    async def pairs_of_door(self, door_id: str) -> set[Pair]:
        return {p for p, _, _ in self._rule_pairs() if p[0] == door_id}

    async def pairs_of_group(self, group_id: str) -> set[Pair]:
        return {p for p, _, via in self._rule_pairs() if via == group_id}

    async def pairs_of_schedule(self, schedule_id: str) -> set[Pair]:
        return {p for p, g, _ in self._rule_pairs() if g.schedule_id == schedule_id}

    async def doors_of_group(self, group_id: str) -> list[str]:
        return [g.door_id for g in self.s.grants.values() if g.group_id == group_id and not g.revoked]

    async def access_facts(self, pairs: set[Pair]) -> AccessFacts:
        users, doors = {u for _, u in pairs}, {d for d, _ in pairs}
        facts = AccessFacts()
        for (door, user), g, via in self._rule_pairs():
            if door in doors and user in users:
                facts.rules.append(RuleFact(g.grant_id, door, user, via, g.valid_from, g.valid_until, g.schedule_id))
                if g.schedule_id:
                    facts.windows[g.schedule_id] = list(self.s.schedules[g.schedule_id].windows)
        facts.suspended = {u: self.s.users[u].suspended for u in users if u in self.s.users}
        facts.doors = {d: DoorState(x.lockdown, x.time_zone, x.max_view_staleness_ms)
                       for d in doors if (x := self.s.doors.get(d))}
        return facts


class FakeIdempotencyStore:
    def __init__(self, state: State) -> None:
        self.s = state

    async def find(self, caller: str, request_id: str) -> StoredResponse | None:
        return self.s.idempotency.get((caller, request_id))

    async def save(self, caller: str, request_id: str, method: str, response: bytes, request_hash: bytes) -> None:
        self.s.idempotency[(caller, request_id)] = StoredResponse(method, response, request_hash)


class FakeUnitOfWork:
    def __init__(self, state: State, revision: int) -> None:
        self.state = state
        self.store = FakeStore(state)
        self.idempotency = FakeIdempotencyStore(state)
        self.revision = revision
        self.events: list[tuple[Any, str]] = []
        self.cancelled = False

    def emit(self, payload: Any, aggregate_key: str) -> None:
        self.events.append((payload, aggregate_key))

    def cancel(self) -> None:
        self.cancelled = True


class FakeDatabase:
    """`ports.UnitOfWorkFactory` in memory; `state` is what is committed."""

    def __init__(self) -> None:
        self.state = State()

    async def write(self, work: Callable[[Any], Awaitable[T]], together: Any = None) -> Committed[T]:
        """Each write on its own (`together` is a permission to combine, not a duty)."""
        working = copy.deepcopy(self.state)
        working.revision += 1
        uow = FakeUnitOfWork(working, working.revision)
        value = await work(uow)  # an error raised here leaves self.state untouched: a rollback
        if uow.cancelled or not uow.events:
            return Committed(value, self.state.revision)
        working.outbox += [(uow.revision, i, payload, key) for i, (payload, key) in enumerate(uow.events)]
        self.state = working
        return Committed(value, uow.revision)

    @contextlib.asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[FakeUnitOfWork]:
        yield FakeUnitOfWork(copy.deepcopy(self.state), self.state.revision)
