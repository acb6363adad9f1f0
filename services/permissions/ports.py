"""What the permissions use cases need from storage; the docstrings are the contract.

A write use case hands its work to `UnitOfWorkFactory.write(work)`; the work
asks the unit of work's `store` and `idempotency`, queues events with `emit`,
and returns; its rows and events are committed together, or nothing. A read
opens `UnitOfWorkFactory.read()` and asks its `store`.
Adapters: `adapters/postgres.py` (the service), `tests/unit/fakes_permissions.py`
(in memory, for the use-case tests).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from access_rules.rules import Window
from services.permissions.domain import (
    AccessFacts,
    Credential,
    Door,
    Grant,
    Group,
    Pair,
    Schedule,
    User,
)


class PermissionsStore(Protocol):
    """The permissions tables as one transaction sees them.

    `get_*` return None for an unknown id; `lock=True` holds the row until the
    transaction ends. `list_*` return up to `limit` rows ordered by id, after the
    id `after` ('' = from the start). Writes return the row as stored. A write
    naming a missing row raises `domain.MissingReference` with the field.
    """

    async def revision(self) -> int: ...

    # users
    async def get_user(self, user_id: str, *, lock: bool = False) -> User | None: ...
    async def external_id_taken(self, external_id: str, *, other_than: str = "") -> bool: ...
    async def taken_external_ids(self, external_ids: list[str]) -> set[str]:
        """Those of `external_ids` a user already has."""
    async def insert_users(self, users: list[User]) -> list[User]:
        """All of `users` (new: not suspended, their external_ids free and distinct), in order, as stored."""
    async def existing_users(self, user_ids: list[str]) -> set[str]:
        """Those of `user_ids` that exist."""
    async def update_user(self, user_id: str, changes: dict[str, Any], at: dt.datetime) -> User:
        """`changes`: display_name, email, external_id ('' clears it), suspended."""
    async def delete_user(self, user_id: str) -> None:
        """Also deletes the user's credentials, grants and memberships."""
    async def list_users(self, after: str, limit: int, *, suspended: bool | None = None) -> list[User]: ...

    # doors
    async def get_door(self, door_id: str, *, lock: bool = False) -> Door | None: ...
    async def insert_door(self, door_id: str, name: str, site: str, time_zone: str, lockdown: bool,
                          max_view_staleness_ms: int, at: dt.datetime) -> Door: ...
    async def update_door(self, door_id: str, changes: dict[str, Any], at: dt.datetime) -> Door:
        """`changes`: name, site, time_zone, lockdown, max_view_staleness_ms."""
    async def delete_door(self, door_id: str) -> None:
        """Also deletes the door's grants."""
    async def list_doors(self, after: str, limit: int, *, site: str = "") -> list[Door]: ...

    # groups
    async def get_group(self, group_id: str, *, lock: bool = False) -> Group | None: ...
    async def group_name_taken(self, name: str, *, other_than: str = "") -> bool: ...
    async def insert_group(self, group_id: str, name: str, at: dt.datetime) -> Group: ...
    async def rename_group(self, group_id: str, name: str, at: dt.datetime) -> Group: ...
    async def delete_group(self, group_id: str) -> None:
        """Also deletes the group's grants and memberships."""
    async def list_groups(self, after: str, limit: int) -> list[Group]: ...
    async def add_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        """Adds the (existing) users; returns those that were not members yet, in the order given."""
    async def remove_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        """Removes the users; returns those that were members, in the order given."""
    async def members(self, group_id: str) -> list[str]: ...
    async def list_members(self, group_id: str, after: str, limit: int) -> list[User]: ...

    # schedules
    async def get_schedule(self, schedule_id: str, *, lock: bool = False) -> Schedule | None: ...
    async def insert_schedule(self, schedule_id: str, name: str, windows: list[Window],
                              at: dt.datetime) -> Schedule: ...
    async def update_schedule(self, schedule_id: str, name: str | None, windows: list[Window] | None,
                              at: dt.datetime) -> Schedule:
        """None leaves that part as it is; the update time moves either way."""
    async def schedule_in_use(self, schedule_id: str) -> bool:
        """An active (not revoked) grant uses it."""
    async def delete_schedule(self, schedule_id: str) -> None:
        """Revoked grants that used it keep no schedule."""
    async def list_schedules(self, after: str, limit: int) -> list[Schedule]: ...

    # credentials
    async def get_credential(self, credential_id: str, *, lock: bool = False) -> Credential | None: ...
    async def active_credential_exists(self, kind: int, secret_hash: bytes) -> bool: ...
    async def insert_credential(self, credential_id: str, user_id: str, kind: int, secret_hash: bytes,
                                label: str, at: dt.datetime) -> Credential: ...
    async def revoke_credential(self, credential_id: str, at: dt.datetime) -> Credential: ...
    async def credentials_of_user(self, user_id: str) -> list[Credential]: ...
    async def list_credentials(self, after: str, limit: int, *, user_id: str = "") -> list[Credential]: ...

    # grants
    async def get_grant(self, grant_id: str) -> Grant | None: ...
    async def insert_grants(self, grants: list[Grant]) -> list[Grant]:
        """All of `grants` (new, not revoked), in order, as stored. The references are checked here, with
        the insert: if one is missing nothing is inserted and `MissingReference` names the first grant
        (`index`) and its first missing reference (`field`: user_id, group_id, door_id, schedule_id)."""
    async def revoke_grants(self, grant_ids: list[str], at: dt.datetime) -> list[Grant]:
        """Revokes the active grants among the (distinct) ids; returns them as stored, in the order given.
        Unknown and already revoked ids are left out."""
    async def active_grants(self, *, user_id: str = "", door_id: str = "", group_id: str = "") -> list[Grant]:
        """The active grants naming that user (directly), door or group: exactly one is given."""
    async def list_grants(self, after: str, limit: int, *, user_id: str = "", group_id: str = "",
                          door_id: str = "", include_revoked: bool = False) -> list[Grant]: ...

    # effective access
    async def pairs_of_user(self, user_id: str) -> set[Pair]:
        """Pairs the user has an active grant in, directly or through a group."""
    async def pairs_of_door(self, door_id: str) -> set[Pair]: ...
    async def all_pairs(self) -> set[Pair]:
        """Every (door, user) pair an active grant covers, directly or through a group."""
    async def all_credentials(self) -> list[Credential]:
        """Every credential, revoked ones included, in credential_id order."""
    async def pairs_of_group(self, group_id: str) -> set[Pair]: ...
    async def pairs_of_schedule(self, schedule_id: str) -> set[Pair]: ...
    async def doors_of_group(self, group_id: str) -> list[str]:
        """Doors with an active grant to the group."""
    async def access_facts(self, pairs: set[Pair]) -> AccessFacts:
        """Active rules of the pairs (direct and through groups), their users' and doors' state, windows."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    method: str
    response: bytes
    request_hash: bytes | None
    """None for answers stored before requests were hashed: replayed as they always were."""


class IdempotencyStore(Protocol):
    """First answers to requests with a request_id, per caller, written in the request's transaction."""

    async def find(self, caller: str, request_id: str) -> StoredResponse | None: ...
    async def save(self, caller: str, request_id: str, method: str, response: bytes,
                   request_hash: bytes) -> None: ...


class UnitOfWork(Protocol):
    """One write's view of its transaction. `revision` is the one its commit will have, known
    before any statement (writes see the latest committed state and nothing can commit
    between their checks and their commit). Its events are written at commit. A write with
    no events, or cancelled, or that raised, leaves nothing behind."""

    revision: int

    # Read-only here, so an adapter may keep its own store types (plain attributes do).
    @property
    def store(self) -> PermissionsStore: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    def emit(self, payload: Any, aggregate_key: str) -> None:
        """Queue an event (a `latchkey.events.v1` message) for this transaction's revision."""

    def cancel(self) -> None:
        """Roll back at the end, whatever was done."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Committed(Generic[T]):
    value: T
    """What the work returned."""
    revision: int
    """The revision its commit has; for a write that changed nothing, the last committed one
    it has seen (its answer is true as of that revision)."""


A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Together(Generic[A, T]):
    """How a write may run together with others of its `kind` in one set-based call.

    `run_all(uow, items)` does what the writes of `items` would each do, all or nothing, and
    returns one value per item, in order; `run_all(uow, [item])` is the write itself. An adapter
    that groups writes may run several of one kind (and one caller) with one call: a round trip
    for all of them instead of one each. If that call fails, it runs them one by one, so only the
    write that is wrong fails."""

    kind: str
    item: A
    run_all: Callable[[UnitOfWork, list[A]], Awaitable[list[T]]]
    touches: Callable[[T], str | None]
    """The pair (or other aggregate) a write's value shows it changed; None when the value cannot
    tell (a grant to a group). Writes run together only when each names its own: two changes
    to one aggregate never share a revision (consumers order them by revision)."""


class UnitOfWorkFactory(Protocol):
    async def write(self, work: Callable[[UnitOfWork], Awaitable[T]],
                    together: Together[Any, T] | None = None) -> Committed[T]:
        """Run `work` in a write transaction and commit it (or, if it raises, nothing of it).

        A revision is a commit, not a write: an adapter may run the works of concurrent
        callers one after the other in one transaction (group commit), so they share its
        revision; one work's error never fails another's. The work may run in another task
        than the caller's, in a copy of the caller's context. Past capacity it raises
        `ResourceExhausted` before running the work. `together`: see `Together` (an adapter
        may ignore it and run `work`)."""

    def read(self, *, snapshot: bool = False) -> AbstractAsyncContextManager[UnitOfWork]:
        """A read-only transaction; `snapshot`: every read sees one moment (with `store.revision()`)."""
