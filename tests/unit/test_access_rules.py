"""The decision procedure: precedence, validity windows, schedules in the door's zone across DST."""

from __future__ import annotations

import datetime as dt

from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import PairAccess, Reason, Rule, Window, evaluate
from services.access.projector import advance

UTC = dt.UTC
WEEKDAYS_9_TO_17 = tuple(Window(d, 9 * 60, 17 * 60) for d in range(1, 6))


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def office(zone: str) -> PairAccess:
    return PairAccess(rules=(Rule("g1", schedule_id="s", windows=WEEKDAYS_9_TO_17),), time_zone=zone)


def test_no_rule_is_no_grant_before_anything_else():
    assert evaluate(PairAccess(user_suspended=True, door_lockdown=True), at(2026, 1, 1)).reason is Reason.NO_GRANT
    assert evaluate(None, at(2026, 1, 1)).reason is Reason.NO_GRANT


def test_suspension_then_lockdown_take_precedence_over_grants():
    rule = (Rule("g1"),)
    assert evaluate(PairAccess(rule, user_suspended=True, door_lockdown=True), at(2026, 1, 1)).reason \
        is Reason.USER_SUSPENDED
    assert evaluate(PairAccess(rule, door_lockdown=True), at(2026, 1, 1)).reason is Reason.DOOR_LOCKDOWN
    assert evaluate(PairAccess(rule), at(2026, 1, 1)).granted


def test_validity_window_is_half_open():
    rule = Rule("g1", valid_from=at(2026, 3, 1), valid_until=at(2026, 4, 1))
    access = PairAccess((rule,))
    assert evaluate(access, at(2026, 2, 28, 23, 59, 59)).reason is Reason.NOT_YET_VALID
    assert evaluate(access, at(2026, 3, 1)).granted
    assert evaluate(access, at(2026, 4, 1) - dt.timedelta(microseconds=1)).granted
    assert evaluate(access, at(2026, 4, 1)).reason is Reason.EXPIRED


def test_any_open_rule_grants():
    closed = Rule("a", valid_until=at(2020, 1, 1))
    open_ = Rule("b")
    assert evaluate(PairAccess((closed, open_)), at(2026, 1, 1)).granted
    assert evaluate(PairAccess((closed,)), at(2026, 1, 1)).reason is Reason.EXPIRED


def test_schedule_follows_the_wall_clock_across_spring_forward_in_madrid():
    # 2026-03-29: Madrid goes from UTC+1 to UTC+2 at 02:00 local (a Sunday).
    # Monday 2026-03-30 09:00 local is 07:00 UTC; the Friday before, 09:00 local was 08:00 UTC.
    madrid = office("Europe/Madrid")
    assert not evaluate(madrid, at(2026, 3, 27, 7, 59)).granted  # Fri 08:59 CET
    assert evaluate(madrid, at(2026, 3, 27, 8, 0)).granted       # Fri 09:00 CET
    assert evaluate(madrid, at(2026, 3, 30, 7, 0)).granted       # Mon 09:00 CEST
    assert evaluate(madrid, at(2026, 3, 30, 6, 59)).reason is Reason.OUTSIDE_SCHEDULE
    assert evaluate(madrid, at(2026, 3, 30, 14, 59)).granted     # 16:59 CEST
    assert not evaluate(madrid, at(2026, 3, 30, 15, 0)).granted  # 17:00 CEST


def test_schedule_across_fall_back_in_new_york():
    # 2026-11-01: New York goes from UTC-4 to UTC-5. Monday 2026-11-02 09:00 EST = 14:00 UTC.
    ny = office("America/New_York")
    assert evaluate(ny, at(2026, 10, 30, 13, 0)).granted          # Fri 09:00 EDT
    assert not evaluate(ny, at(2026, 11, 2, 13, 59)).granted      # Mon 08:59 EST
    assert evaluate(ny, at(2026, 11, 2, 14, 0)).granted           # Mon 09:00 EST
    # Sunday is outside the schedule whatever the hour.
    assert evaluate(ny, at(2026, 11, 1, 15, 0)).reason is Reason.OUTSIDE_SCHEDULE


def test_watermark_advances_only_over_complete_revisions():
    partial: dict = {}
    w = advance(0, partial, 2, 0, 1)          # revision 2 complete, 1 missing
    assert w == 0
    w = advance(w, partial, 1, 0, 2)          # half of revision 1
    assert w == 0
    w = advance(w, partial, 1, 0, 2)          # a redelivery changes nothing
    assert w == 0
    w = advance(w, partial, 1, 1, 2)          # revision 1 complete: 1 and 2 are applied
    assert (w, partial) == (2, {})
    assert advance(w, partial, 2, 0, 1) == 2  # old events are ignored


def test_every_rule_reason_is_the_contracts_decision_reason_of_the_same_name_and_number():
    # Unlock and ExplainAccess send `Reason` values as `DecisionReason` numbers: one table, two names.
    contract = {name.removeprefix("DECISION_REASON_"): number
                for name, number in ev.DecisionReason.items() if number != 0}
    assert {r.name: r.value for r in Reason} == contract
