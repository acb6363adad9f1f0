"""Input rules for the permissions API: functions that raise InvalidArgument naming the field.

The entrypoint calls them while it turns a request into a command, so a use
case only ever sees valid values.
"""

from __future__ import annotations

import functools
import uuid
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import Window
from latchkit.errors import InvalidArgument

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_REQUEST_ID = 64
MAX_BATCH = 1000


def uuid_str(value: str, field: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return ""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else _bad_uuid(field)
    except ValueError:
        return _bad_uuid(field)


def _bad_uuid(field: str) -> str:
    raise InvalidArgument(field, "must be a UUID (8-4-4-4-12 hex digits)")


def text(value: str, field: str, *, max_len: int, required: bool) -> str:
    if required and not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters")
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def request_id(value: str, field: str = "request_id") -> str:
    return text(value, field, max_len=MAX_REQUEST_ID, required=False)


@functools.lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    # `localtime` and `posixrules` are links to whatever the host is set to, not IANA zones:
    # a door's schedule must not change with the machine that reads it.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}


def time_zone(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required (an IANA time zone such as Europe/Madrid)")
    if value not in _zones():
        raise InvalidArgument(field, f"{value[:64]!r} is not an IANA time zone")
    return value


MAX_VIEW_STALENESS_MS = (1_000, 3_600_000)


def max_view_staleness_ms(value: Duration, field: str) -> int:
    """A fail-closed door's bound, in milliseconds: 0 (off) or 1 s..1 h in whole milliseconds."""
    seconds, nanos = value.seconds, value.nanos
    if not seconds and not nanos:
        return 0
    low, high = MAX_VIEW_STALENESS_MS
    if seconds < 0 or nanos < 0 or nanos % 1_000_000 or not low <= seconds * 1000 + nanos // 1_000_000 <= high:
        raise InvalidArgument(field, "must be unset (off) or 1 s..1 h in whole milliseconds")
    return seconds * 1000 + nanos // 1_000_000


def windows(items: Sequence[ev.ScheduleWindow], field: str) -> list[Window]:
    """At least one window; each within one day; windows of one day must not overlap."""
    if not items:
        raise InvalidArgument(field, "at least one window is required")
    if len(items) > 7 * 48:
        raise InvalidArgument(field, "too many windows")
    result = []
    for i, w in enumerate(items):
        f = f"{field}[{i}]"
        if not ev.DAY_OF_WEEK_MONDAY <= w.day_of_week <= ev.DAY_OF_WEEK_SUNDAY:
            raise InvalidArgument(f"{f}.day_of_week", "must be MONDAY..SUNDAY")
        if not 0 <= w.start_minute <= 1439:
            raise InvalidArgument(f"{f}.start_minute", "must be within 0..1439")
        if not w.start_minute < w.end_minute <= 1440:
            raise InvalidArgument(f"{f}.end_minute", "must be after start_minute and at most 1440")
        result.append(Window(w.day_of_week, w.start_minute, w.end_minute))
    result.sort(key=lambda w: (w.day, w.start_minute))
    for a, b in zip(result, result[1:], strict=False):
        if a.day == b.day and b.start_minute < a.end_minute:
            raise InvalidArgument(field, f"windows overlap on day {a.day}")
    return result


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def credential_secret(kind: int, secret: str) -> str:
    """Card 4..64 characters; PIN 4..12 digits; mobile key 16..256 characters."""
    if kind == ev.CREDENTIAL_KIND_CARD:
        ok = 4 <= len(secret) <= 64 and secret.isprintable()
        rule = "a card number must be 4..64 printable characters"
    elif kind == ev.CREDENTIAL_KIND_PIN:
        ok = 4 <= len(secret) <= 12 and secret.isascii() and secret.isdigit()
        rule = "a PIN must be 4..12 digits"
    elif kind == ev.CREDENTIAL_KIND_MOBILE:
        ok = 16 <= len(secret) <= 256 and secret.isprintable()
        rule = "a mobile key must be 16..256 printable characters"
    else:
        raise InvalidArgument("kind", "must be CARD, PIN or MOBILE")
    if not ok:
        # Never echo the secret.
        raise InvalidArgument("secret", rule)
    return secret


# ---- batches -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Items:
    """How errors name the items of a write: as the single RPC does, or by index in a batch.

    `Items()` is a single call: fields and messages as they always were. `Items("requests")`
    names `requests[3].grant.door_id`; `Items("grant_ids", nested=False)` names the item itself
    (`grant_ids[2]` for what a single call calls `grant_id`).
    """

    batch: str = ""
    nested: bool = True

    def field(self, index: int, name: str) -> str:
        if not self.batch:
            return name
        return f"{self.batch}[{index}].{name}" if self.nested else f"{self.batch}[{index}]"

    def says(self, index: int, message: str) -> str:
        return f"{self.batch}[{index}]: {message}" if self.batch else message


SINGLE = Items()


def batch_size(items: Sequence[object], field: str) -> None:
    if not 1 <= len(items) <= MAX_BATCH:
        raise InvalidArgument(field, f"a batch takes 1 to {MAX_BATCH} items (got {len(items)})")


def item_request_id(value: str, field: str) -> None:
    """An item of a batch has no request_id of its own: the batch's request_id covers it."""
    if value:
        raise InvalidArgument(field, "must be empty in a batch (set the batch's request_id instead)")


def distinct_ids(values: Sequence[str], field: str) -> list[str]:
    """1 to MAX_BATCH UUIDs, each once: `field[i]` names the bad (or the repeated) one."""
    batch_size(values, field)
    seen: dict[str, int] = {}
    result = []
    for i, value in enumerate(values):
        value = uuid_str(value, f"{field}[{i}]")
        if value in seen:
            raise InvalidArgument(f"{field}[{i}]", f"repeats {field}[{seen[value]}]")
        seen[value] = i
        result.append(value)
    return result
