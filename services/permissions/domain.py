"""The permissions records as the use cases see them: typed rows, pages, access facts.

No I/O and no protobuf: a repository returns these, the use cases pass them
on, the entrypoint maps them to messages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from access_rules.rules import Window
from latchkit.errors import InvalidArgument

T = TypeVar("T")
Pair = tuple[str, str]
"""(door_id, user_id): the unit effective access is computed and published in."""


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    display_name: str
    email: str
    external_id: str
    suspended: bool
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Door:
    door_id: str
    name: str
    site: str
    time_zone: str
    lockdown: bool
    max_view_staleness_ms: int
    """0: off (the door answers from the last state); otherwise a fail-closed door's bound."""
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Group:
    group_id: str
    name: str
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Schedule:
    schedule_id: str
    name: str
    create_time: dt.datetime
    update_time: dt.datetime
    windows: tuple[Window, ...] = ()
    """Ordered by day, then start minute."""


@dataclass(frozen=True, slots=True)
class Credential:
    credential_id: str
    user_id: str
    kind: int
    label: str
    revoked: bool
    create_time: dt.datetime
    revoke_time: dt.datetime | None
    secret_hash: bytes = field(default=b"", repr=False)
    """HMAC of the secret: carried in events, never returned by the API."""


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: str
    user_id: str
    """Exactly one of user_id and group_id is set; the other is ''."""
    group_id: str
    door_id: str
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    schedule_id: str
    revoked: bool
    create_time: dt.datetime
    revoke_time: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class RuleFact:
    """One active grant as it applies to one pair (through a group when `via_group_id` is set)."""

    grant_id: str
    door_id: str
    user_id: str
    via_group_id: str
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    schedule_id: str


@dataclass(frozen=True, slots=True)
class DoorState:
    lockdown: bool
    time_zone: str
    max_view_staleness_ms: int


@dataclass(slots=True)
class AccessFacts:
    """What decides a set of pairs, as one transaction sees it (assembled by `effective`)."""

    rules: list[RuleFact] = field(default_factory=list)
    suspended: dict[str, bool] = field(default_factory=dict)
    doors: dict[str, DoorState] = field(default_factory=dict)
    windows: dict[str, list[Window]] = field(default_factory=dict)


class MissingReference(Exception):
    """A new row names a row that does not exist; `field` is the reference (user_id, door_id, ...),
    `index` the row's place among the rows written together."""

    def __init__(self, field: str, index: int = 0) -> None:
        super().__init__(field)
        self.field = field
        self.index = index


def encode_page_token(kind: str, last_key: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}|{last_key}".encode()).decode()


def decode_page_token(token: str, kind: str) -> str:
    """The last key of the previous page; a forged or foreign token is INVALID_ARGUMENT."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        token_kind, _, last = raw.partition("|")
        if token_kind != kind:
            raise ValueError
        uuid.UUID(last)
        return last
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a page token from this list") from None
