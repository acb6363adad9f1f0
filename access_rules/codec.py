"""`AccessChanged` (the bus event) <-> `PairAccess` (the decision input)."""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from latchkey.events.v1 import events_pb2

from access_rules.rules import PairAccess, Rule, Window


def _ts(value: dt.datetime | None, target: Timestamp) -> None:
    if value is not None:
        target.FromDatetime(value.astimezone(dt.UTC))


def _dt(message: Message, field: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=dt.UTC)


def to_event(door_id: str, user_id: str, access: PairAccess) -> events_pb2.AccessChanged:
    event = events_pb2.AccessChanged(
        door_id=door_id, user_id=user_id, user_suspended=access.user_suspended,
        door_lockdown=access.door_lockdown, door_time_zone=access.time_zone,
    )
    if access.door_max_view_staleness:
        event.door_max_view_staleness.FromMilliseconds(round(access.door_max_view_staleness * 1000))
    for rule in access.rules:
        item = event.rules.add(grant_id=rule.grant_id, via_group_id=rule.via_group_id,
                               schedule_id=rule.schedule_id)
        _ts(rule.valid_from, item.valid_from)
        _ts(rule.valid_until, item.valid_until)
        for w in rule.windows:
            item.windows.add(day_of_week=w.day, start_minute=w.start_minute, end_minute=w.end_minute)
    return event


def from_event(event: events_pb2.AccessChanged) -> PairAccess:
    rules = tuple(
        Rule(
            grant_id=r.grant_id, via_group_id=r.via_group_id, valid_from=_dt(r, "valid_from"),
            valid_until=_dt(r, "valid_until"), schedule_id=r.schedule_id,
            windows=tuple(Window(w.day_of_week, w.start_minute, w.end_minute) for w in r.windows),
        )
        for r in event.rules
    )
    staleness = event.door_max_view_staleness
    return PairAccess(rules=rules, user_suspended=event.user_suspended,
                      door_lockdown=event.door_lockdown, time_zone=event.door_time_zone or "UTC",
                      door_max_view_staleness=staleness.seconds + staleness.nanos / 1e9)
