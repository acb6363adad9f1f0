"""Permissions use cases: each write is one unit of work with its revision and its events.

Each use case opens its own unit of work from the factory it was given. Checks
run inside the write transaction, after the revision lock, so what they read
cannot change before commit. Any error raised here rolls the whole
transaction back: nothing is partially written.

Creates may carry a request_id (`Idempotent`): the first answer is stored in
the same transaction, a retry gets it back without writing, and a request_id
reused for a different request is refused (AIP-155).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, overload

from latchkey.events.v1 import events_pb2 as ev

from latchkit.errors import AlreadyExists, InvalidArgument, NotFound
from services.permissions.domain import (
    Credential,
    Door,
    Grant,
    Page,
    Schedule,
    User,
    decode_page_token,
    encode_page_token,
)
from services.permissions.ports import (
    PermissionsStore,
    StoredResponse,
    Together,
    UnitOfWork,
    UnitOfWorkFactory,
)

T = TypeVar("T")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Idempotent:
    """A create with a request_id: who asked, what exactly, and how to store the answer."""

    caller: str
    request_id: str
    method: str
    request: bytes
    """The whole request, deterministically serialized: hashed, never stored."""
    encode: Callable[[Any, int], bytes]
    """(the use case's result, revision) -> the response as it will be replayed."""


@dataclass(frozen=True, slots=True)
class Written(Generic[T]):
    value: T
    revision: int
    """Of this write; or the last committed one when nothing changed."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """A retry: the first answer, exactly as it was stored."""

    response: bytes


@dataclass(frozen=True, slots=True)
class _Replay:
    stored: StoredResponse


def request_hash(hmac_key: bytes, method: str, request: bytes) -> bytes:
    """HMAC-SHA256 of the request.

    Keyed, because some requests carry a secret (a credential's PIN has few
    enough values to brute-force an unkeyed hash); the method and a label in
    front keep it apart from the credential hashes made with the same key.
    """
    return hmac.digest(hmac_key, b"latchkey/idempotency/v1\0" + method.encode() + b"\0" + request, "sha256")


PAGE_KEYS = {"users": "user_id", "doors": "door_id", "groups": "group_id", "schedules": "schedule_id",
             "credentials": "credential_id", "grants": "grant_id"}


def need(found: T | None, name: str, key: str) -> T:
    if found is None:
        raise NotFound(f"{name} {key} not found")
    return found


class UseCases:
    """What every use case shares: its unit-of-work factory and the idempotency rule."""

    def __init__(self, uow: UnitOfWorkFactory, hmac_key: bytes, *, clock: Callable[[], dt.datetime] = now,
                 ids: Callable[[], str] = new_id) -> None:
        self.uow = uow
        self.hmac_key = hmac_key
        self.now = clock
        self.new_id = ids

    @overload
    async def _write(self, work: Callable[[UnitOfWork], Awaitable[T]],
                     idempotent: None = None, together: Together[Any, T] | None = None) -> Written[T]: ...

    @overload
    async def _write(self, work: Callable[[UnitOfWork], Awaitable[T]],
                     idempotent: Idempotent | None, together: Together[Any, T] | None = None
                     ) -> Written[T] | Replayed: ...

    async def _write(self, work: Callable[[UnitOfWork], Awaitable[T]],
                     idempotent: Idempotent | None = None,
                     together: Together[Any, T] | None = None) -> Written[T] | Replayed:
        """The write; without a request_id it is always `Written`, with one a retry is `Replayed`.

        `together` (`ports.Together`) lets it run in one call with others of its kind; a write
        with a request_id always runs on its own (its stored answer is its own)."""
        key = idempotent if idempotent is not None and idempotent.request_id else None
        digest = request_hash(self.hmac_key, key.method, key.request) if key else b""

        async def attempt(uow: UnitOfWork) -> T | _Replay:
            if key:
                stored = await uow.idempotency.find(key.caller, key.request_id)
                if stored is not None:
                    uow.cancel()  # a replay writes nothing
                    return _Replay(stored)
            value = await work(uow)
            if key:
                await uow.idempotency.save(key.caller, key.request_id, key.method,
                                           key.encode(value, uow.revision), digest)
            return value

        if key is None and together is not None:
            alone = await self.uow.write(work, together)
            return Written(alone.value, alone.revision)
        done = await self.uow.write(attempt)
        value = done.value
        if isinstance(value, _Replay):
            replay = value.stored
            if key is None:  # only a request_id finds a stored answer
                raise RuntimeError("a stored answer was found for a write without a request_id")
            if replay.method != key.method:
                raise AlreadyExists(f"request_id was already used for {replay.method}")
            # Answers stored before requests were hashed carry none: replayed as they always were.
            if replay.request_hash is not None and replay.request_hash != digest:
                raise InvalidArgument("request_id", "was already used for a different request; a retry must "
                                                    "repeat the request unchanged, a new request needs a new "
                                                    "request_id")
            return Replayed(replay.response)
        return Written(value, done.revision)

    async def _read(self, work: Callable[[PermissionsStore], Awaitable[T]]) -> T:
        async with self.uow.read() as uow:
            return await work(uow.store)

    async def _page(self, kind: str, size: int, token: str,
                    fetch: Callable[[PermissionsStore, str, int], Awaitable[list]],
                    check: Callable[[PermissionsStore], Awaitable[Any]] | None = None, *,
                    filters: tuple = ()) -> Page:
        """One page after `token`. A token names its list and the list's filters: used with other
        filters it is INVALID_ARGUMENT, not the rest of a different list."""
        scope = f"{kind}:{hashlib.sha256(repr(filters).encode()).hexdigest()[:16]}" if filters else kind
        after = decode_page_token(token, scope)

        async def work(store: PermissionsStore) -> list:
            if check is not None:
                await check(store)
            return await fetch(store, after, size + 1)
        rows = await self._read(work)
        more = len(rows) > size
        rows = rows[:size]
        return Page(rows, encode_page_token(scope, getattr(rows[-1], PAGE_KEYS[kind])) if more else "")


# ---- events ----------------------------------------------------------------------
# The rows keep enums as ints (validated on the way in); the casts only tell mypy so.

def user_event(user: User, deleted: bool = False) -> ev.UserChanged:
    state = ev.USER_STATE_SUSPENDED if user.suspended else ev.USER_STATE_ACTIVE
    return ev.UserChanged(user_id=user.user_id, display_name=user.display_name, state=state, deleted=deleted)


def door_event(door: Door, deleted: bool = False) -> ev.DoorChanged:
    event = ev.DoorChanged(door_id=door.door_id, name=door.name, site=door.site, time_zone=door.time_zone,
                           lockdown=door.lockdown, deleted=deleted)
    if door.max_view_staleness_ms:
        event.max_view_staleness.FromMilliseconds(door.max_view_staleness_ms)
    return event


def schedule_event(schedule: Schedule, deleted: bool = False) -> ev.ScheduleChanged:
    windows = [] if deleted else [ev.ScheduleWindow(day_of_week=cast(ev.DayOfWeek, w.day),
                                                    start_minute=w.start_minute, end_minute=w.end_minute)
                                  for w in schedule.windows]
    return ev.ScheduleChanged(schedule_id=schedule.schedule_id, name=schedule.name, windows=windows,
                              deleted=deleted)


def credential_event(c: Credential, *, deleted: bool = False) -> ev.CredentialChanged:
    state = ev.CREDENTIAL_STATE_REVOKED if c.revoked or deleted else ev.CREDENTIAL_STATE_ACTIVE
    return ev.CredentialChanged(credential_id=c.credential_id, user_id=c.user_id,
                                kind=cast(ev.CredentialKind, c.kind), secret_hash=c.secret_hash, state=state,
                                deleted=deleted, label="" if deleted else c.label)


def grant_event(g: Grant, revoked: bool | None = None) -> ev.GrantChanged:
    event = ev.GrantChanged(grant_id=g.grant_id, user_id=g.user_id, group_id=g.group_id, door_id=g.door_id,
                            schedule_id=g.schedule_id, revoked=g.revoked if revoked is None else revoked)
    if g.valid_from is not None:
        event.valid_from.FromDatetime(g.valid_from)
    if g.valid_until is not None:
        event.valid_until.FromDatetime(g.valid_until)
    return event
