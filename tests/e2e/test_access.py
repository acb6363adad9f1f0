"""Unlock on the running system: every reason, replays, min_revision, Redis and NATS outages."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import grpc
import pytest
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from tests.e2e.helpers import Door, audit_events, card, rid, wait_for_view

GRANTED, DENIED = ev.DECISION_GRANTED, ev.DECISION_DENIED
R = ev


@pytest.fixture
def setup(system, pki, admin):
    """A user with a card, a door and its controller; no grant yet."""
    user, door = admin.user(), admin.door()
    secret = rid()[:16]
    cred = admin.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=1, secret=secret))
    controller = Door(system, pki, door.door_id)
    yield user, door, card(secret), cred.credential, controller
    controller.close()


def decision(answer):
    return answer.decision, answer.reason


def test_suspension_lockdown_and_credential_revocation(admin, setup):
    user, door, presented, cred, ctl = setup
    g = admin.grant(user.user_id, door.door_id)
    assert decision(ctl.unlock(credential=presented, min_revision=g.revision)) == (GRANTED, R.DECISION_REASON_GRANTED)
    # Suspended: denied with that reason; reactivated: granted again.
    s = admin.SuspendUser(pm.SuspendUserRequest(user_id=user.user_id))
    assert decision(ctl.unlock(credential=presented, min_revision=s.revision)) == (DENIED,
                                                                                   R.DECISION_REASON_USER_SUSPENDED)
    s = admin.ReactivateUser(pm.ReactivateUserRequest(user_id=user.user_id))
    assert ctl.unlock(credential=presented, min_revision=s.revision).decision == GRANTED
    # Lockdown: everyone is denied at that door.
    s = admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=door.door_id, lockdown=True))
    assert decision(ctl.unlock(user_id=user.user_id, min_revision=s.revision)) == (DENIED,
                                                                                   R.DECISION_REASON_DOOR_LOCKDOWN)
    s = admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=door.door_id, lockdown=False))
    assert ctl.unlock(user_id=user.user_id, min_revision=s.revision).decision == GRANTED
    # The card is revoked: that card is refused, with that reason.
    s = admin.RevokeCredential(pm.RevokeCredentialRequest(credential_id=cred.credential_id))
    assert decision(ctl.unlock(credential=presented, min_revision=s.revision)) == (
        DENIED, R.DECISION_REASON_CREDENTIAL_REVOKED)


def test_schedules_in_the_doors_time_zone(admin, setup):
    user, door, presented, _, ctl = setup
    zone = "America/New_York"
    admin.UpdateDoor(pm.UpdateDoorRequest(door=pm.Door(door_id=door.door_id, name="Door", time_zone=zone)))
    local = dt.datetime.now(dt.UTC).astimezone(ZoneInfo(zone))
    today, other_day = local.isoweekday(), local.isoweekday() % 7 + 1
    # A schedule open all of today (local) opens the door; one open only another day does not.
    always = admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="today", windows=[
        ev.ScheduleWindow(day_of_week=today, start_minute=0, end_minute=1440)]))).schedule
    never = admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="other", windows=[
        ev.ScheduleWindow(day_of_week=other_day, start_minute=0, end_minute=1440)]))).schedule
    g = admin.grant(user.user_id, door.door_id, schedule_id=never.schedule_id)
    assert decision(ctl.unlock(credential=presented, min_revision=g.revision)) == (
        DENIED, R.DECISION_REASON_OUTSIDE_SCHEDULE)
    g = admin.grant(user.user_id, door.door_id, schedule_id=always.schedule_id)
    assert ctl.unlock(credential=presented, min_revision=g.revision).decision == GRANTED
    # The oracle at a DST instant: Monday after the fall-back, 09:00 EST = 14:00 UTC.
    office = admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(name="office", windows=[
        ev.ScheduleWindow(day_of_week=1, start_minute=540, end_minute=1020)]))).schedule
    other_user = admin.user()
    admin.grant(other_user.user_id, door.door_id, schedule_id=office.schedule_id)
    request = pm.ExplainAccessRequest(user_id=other_user.user_id, door_id=door.door_id)
    request.at.FromDatetime(dt.datetime(2026, 11, 2, 14, 0, tzinfo=dt.UTC))
    assert admin.ExplainAccess(request).decision == GRANTED
    request.at.FromDatetime(dt.datetime(2026, 11, 2, 13, 59, tzinfo=dt.UTC))
    assert admin.ExplainAccess(request).reason == R.DECISION_REASON_OUTSIDE_SCHEDULE


def test_request_id_replay_returns_the_first_answer_and_is_one_unlock(system, pki, admin, setup):
    user, door, presented, _, ctl = setup
    g = admin.grant(user.user_id, door.door_id)
    first = ctl.unlock(credential=presented, min_revision=g.revision, request_id="press-1")
    admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id))
    again = ctl.unlock(credential=presented, request_id="press-1")
    assert again == first and first.decision == GRANTED
    # One decision event for the request, followed by the next unlock's.
    later = ctl.unlock(credential=presented, request_id="press-2")
    events = audit_events(system, pki, count=2, door_id=door.door_id, event_types=["access.unlock_decided"])
    assert [e.event.envelope.unlock_decided.decision_id for e in events] == [first.decision_id, later.decision_id]


def test_min_revision_beyond_the_view_is_a_stale_view_denial_never_a_stale_answer(admin, setup):
    _, door, presented, _, ctl = setup
    answer = ctl.unlock(credential=presented, min_revision=10**12, timeout=1, settle=False)
    assert decision(answer) == (DENIED, R.DECISION_REASON_STALE_VIEW)
    assert answer.view_revision < 10**12


def test_unlock_needs_a_deadline(setup):
    _, door, presented, _, ctl = setup
    from latchkey.access.v1 import access_pb2

    request = access_pb2.UnlockRequest(door_id=door.door_id, credential=presented, request_id=rid())
    for timeout in (None, 3600):
        with pytest.raises(grpc.RpcError) as info:
            ctl.stub.Unlock(request, timeout=timeout)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_redis_killed_mid_test_answers_keep_coming_from_the_view(system, pki, stack, admin, setup):
    user, door, presented, _, ctl = setup
    g = admin.grant(user.user_id, door.door_id)
    assert ctl.unlock(credential=presented, min_revision=g.revision).decision == GRANTED
    stack.stop_component("redis")
    try:
        # Still granted from the view, and a revoke made during the outage is honoured.
        assert ctl.unlock(credential=presented).decision == GRANTED
        r = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id))
        # Without Redis the projector first lets its Redis lease lapse (up to 1 s): that can
        # outlast min_revision's 1 s wait (a STALE_VIEW denial), so wait for the view first.
        wait_for_view(system, pki, r.revision)
        assert decision(ctl.unlock(credential=presented, min_revision=r.revision)) == (DENIED,
                                                                                       R.DECISION_REASON_NO_GRANT)
    finally:
        stack.start_component("redis")
    # Redis is back, empty: still the right answer.
    assert ctl.unlock(credential=presented).decision == DENIED


def test_nats_stopped_while_decisions_keep_coming_loses_none(system, pki, stack, admin, setup):
    user, door, presented, _, ctl = setup
    g = admin.grant(user.user_id, door.door_id)
    ctl.unlock(credential=presented, min_revision=g.revision)
    # The per-process caches answer as soon as their feed has the grant; without NATS
    # they step aside and the view answers, so the view must have it too.
    wait_for_view(system, pki, g.revision)
    stack.stop_component("nats")
    try:
        # The door keeps answering while the broker is down.
        answers = [ctl.unlock(credential=presented) for _ in range(20)]
    finally:
        stack.start_component("nats")
    assert all(a.decision == GRANTED for a in answers), [(a.decision, a.reason, a.view_revision) for a in answers]
    events = audit_events(system, pki, count=21, timeout=60, door_id=door.door_id,
                          event_types=["access.unlock_decided"])
    stored = [e.event.envelope.unlock_decided.decision_id for e in events][1:]
    assert stored == [a.decision_id for a in answers]
