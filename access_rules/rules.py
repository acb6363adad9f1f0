"""May this user open this door now, and why: the one decision procedure.

Permissions' `ExplainAccess` (the oracle, over PostgreSQL) and access's
`Unlock` (over the view) both call `decide` (`evaluate` adds each rule's reason), so the two sides cannot drift.
Pure domain: no I/O, no protobuf. Reason values equal the
`latchkey.events.v1.DecisionReason` numbers.

Precedence, first match wins: no rule at all -> NO_GRANT; a fail-closed door
(`door_max_view_staleness`) whose deciding process cannot show its view is
that fresh -> STALE_VIEW; user suspended -> USER_SUSPENDED; door in lockdown
-> DOOR_LOCKDOWN; any rule open now -> GRANTED; otherwise the reason of the
first rule (by grant id).
Schedules are read in the door's time zone, on the wall clock (so a window
09:00-17:00 stays 09:00-17:00 across a DST change).
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo


class Reason(enum.IntEnum):
    GRANTED = 1
    NO_GRANT = 2
    OUTSIDE_SCHEDULE = 3
    NOT_YET_VALID = 4
    EXPIRED = 5
    USER_SUSPENDED = 6
    DOOR_LOCKDOWN = 7
    UNKNOWN_CREDENTIAL = 8
    CREDENTIAL_REVOKED = 9
    # Reserved, never decided: the view holds pairs, not a user or door directory, so an
    # unknown user or door is NO_GRANT (and a door must not learn who exists).
    UNKNOWN_USER = 10
    UNKNOWN_DOOR = 11
    UNAVAILABLE = 12
    STALE_VIEW = 13
    RATE_LIMITED = 14
    WRONG_DOOR_IDENTITY = 15


@dataclass(frozen=True, slots=True)
class Window:
    """[start_minute, end_minute) on `day` (1 = Monday ... 7 = Sunday), local time."""

    day: int
    start_minute: int
    end_minute: int


@dataclass(frozen=True, slots=True)
class Rule:
    grant_id: str
    via_group_id: str = ""
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    schedule_id: str = ""
    windows: tuple[Window, ...] = ()
    """Used only when schedule_id is set."""

    def reason_at(self, at: dt.datetime, zone: ZoneInfo) -> Reason:
        if self.valid_from is not None and at < self.valid_from:
            return Reason.NOT_YET_VALID
        if self.valid_until is not None and at >= self.valid_until:
            return Reason.EXPIRED
        if self.schedule_id:
            local = at.astimezone(zone)
            day, minute = local.isoweekday(), local.hour * 60 + local.minute
            if not any(w.day == day and w.start_minute <= minute < w.end_minute for w in self.windows):
                return Reason.OUTSIDE_SCHEDULE
        return Reason.GRANTED


@dataclass(frozen=True, slots=True)
class PairAccess:
    """Everything that decides one (door, user) pair, as of one version."""

    rules: tuple[Rule, ...] = ()
    user_suspended: bool = False
    door_lockdown: bool = False
    time_zone: str = "UTC"
    door_max_view_staleness: float = 0.0
    """Seconds; 0: off. Otherwise the door is fail-closed: see `decide`'s `view_age`."""


@dataclass(frozen=True, slots=True)
class Verdict:
    granted: bool
    reason: Reason
    per_rule: tuple[tuple[Rule, Reason], ...] = ()


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def _by_grant(rule: Rule) -> str:
    return rule.grant_id


def decide(access: PairAccess | None, at: dt.datetime, view_age: float | None = 0.0) -> tuple[bool, Reason]:
    """(granted, reason): `evaluate` without the per-rule detail, for Unlock's hot path.

    `view_age`: seconds since the deciding process last showed that its view held
    everything the permissions stream did (None: it cannot show it at all; a negative
    age, a clock stepped back, shows nothing either). Only a fail-closed door looks at it.
    """
    if access is None or not access.rules:
        return False, Reason.NO_GRANT
    limit = access.door_max_view_staleness
    if limit and (view_age is None or not 0.0 <= view_age <= limit):
        return False, Reason.STALE_VIEW
    if access.user_suspended:
        return False, Reason.USER_SUSPENDED
    if access.door_lockdown:
        return False, Reason.DOOR_LOCKDOWN
    rules = access.rules if len(access.rules) == 1 else sorted(access.rules, key=_by_grant)
    tz = zone(access.time_zone)
    first: Reason | None = None
    for rule in rules:
        reason = rule.reason_at(at, tz)
        if reason is Reason.GRANTED:
            return True, reason
        if first is None:
            first = reason
    return False, first if first is not None else Reason.NO_GRANT


def evaluate(access: PairAccess | None, at: dt.datetime) -> Verdict:
    """The decision with each rule's own reason (what ExplainAccess shows)."""
    granted, reason = decide(access, at)
    if access is None or not access.rules:
        return Verdict(granted, reason)
    tz = zone(access.time_zone)
    per_rule = tuple((rule, rule.reason_at(at, tz)) for rule in sorted(access.rules, key=_by_grant))
    return Verdict(granted, reason, per_rule)
