"""AuditService against the comments of audit.proto, over gRPC only.

tests/e2e already checks the seam of `follow`, resuming from a cursor (single
and batched), follow ending at end_time, refusal of an unknown event type or a
forged cursor, and a scenario's actors; this file covers the rest of what the
comments promise.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from google.protobuf import timestamp_pb2
from latchkey.access.v1 import access_pb2 as ac
from latchkey.audit.v1 import audit_pb2 as au
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from tests.blackbox.conftest import bad_fields, new_door, new_user, refused, rid

C = grpc.StatusCode
ADMIN = "spiffe://latchkey/role/admin"
PERMISSION_OUTCOMES = {"APPLIED", "DELETED", "RULES", "NO_RULES"}


def ts(year: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt.datetime(year, 1, 1, tzinfo=dt.UTC))
    return t


def read(auditor, **fields) -> list[au.AuditEvent]:
    """The stored events matching the request, without following."""
    replies = auditor.AuditLog(au.AuditLogRequest(max_batch=1000, **fields), timeout=20)
    return [e for r in replies for e in r.events]


def follow(auditor, count: int, **fields) -> list[au.AuditEvent]:
    """Follow until `count` events matched (they are stored asynchronously)."""
    events = []
    for reply in auditor.AuditLog(au.AuditLogRequest(follow=True, **fields), timeout=20):
        events.append(reply.event)
        if len(events) == count:
            break
    return events


@pytest.fixture
def scene(perms, door_controller):
    """A user with a card and a grant at a door, one granted and one denied unlock, all stored."""
    user, door = new_user(perms), new_door(perms)
    secret = "audit-" + rid()[:12]
    issued = perms.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=ev.CREDENTIAL_KIND_CARD,
                                                             secret=secret))
    granted = perms.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id, door_id=door.door_id)))
    ctl = door_controller(door.door_id)
    card = ac.PresentedCredential(kind=ev.CREDENTIAL_KIND_CARD, secret=secret)
    opened = ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, credential=card, request_id=rid(),
                                         min_revision=granted.revision), timeout=5)
    shut = ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, user_id=new_user(perms).user_id, request_id=rid()),
                      timeout=5)
    return {"user": user, "door": door, "secret": secret, "issued": issued, "granted": granted,
            "answers": [opened, shut]}


# ---- what an event says ---------------------------------------------------------------------------------------

def test_a_decision_event_says_who_asked_what_came_out_and_why(auditor, scene):
    door = scene["door"]
    events = follow(auditor, 2, door_id=door.door_id, event_types=["access.unlock_decided"])
    answers = scene["answers"]
    assert [e.envelope.unlock_decided.decision_id for e in events] == [a.decision_id for a in answers]
    for event, answer in zip(events, answers, strict=True):
        assert event.type == "access.unlock_decided" and event.action == "unlock_decided"
        assert event.actor == f"spiffe://latchkey/door/{door.door_id}"
        assert event.outcome == ev.Decision.Name(answer.decision).removeprefix("DECISION_")
        assert event.reason == ev.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_")
        assert event.revision == 0 and event.door_id == door.door_id
        # source_time is when the decision was made, kept to the microsecond.
        assert event.source_time.ToMicroseconds() == answer.server_time.ToMicroseconds()
        assert event.source_time.ToMicroseconds() == event.envelope.occurred_at.ToMicroseconds()
        assert event.HasField("stored_time")
    assert events[0].user_id == scene["user"].user_id
    assert events[0].credential_id == scene["issued"].credential.credential_id
    assert (events[0].outcome, events[1].outcome) == ("GRANTED", "DENIED")


def test_a_permission_event_carries_its_write_revision_and_an_outcome_and_no_secret(auditor, scene):
    user = scene["user"]
    events = follow(auditor, 3, user_id=user.user_id, event_types=[
        "permissions.user_changed", "permissions.credential_changed", "permissions.grant_changed"])
    assert [e.type for e in events] == ["permissions.user_changed", "permissions.credential_changed",
                                        "permissions.grant_changed"]
    for event in events:
        assert event.actor == ADMIN and event.action == event.type.split(".", 1)[1]
        assert event.outcome in PERMISSION_OUTCOMES, event.outcome
        assert event.revision == event.envelope.revision > 0
        assert scene["secret"].encode() not in event.SerializeToString()
    assert events[1].revision == scene["issued"].revision
    assert events[1].credential_id == scene["issued"].credential.credential_id
    assert events[2].revision == scene["granted"].revision


# ---- filters, order, range ------------------------------------------------------------------------------------

def test_filters_match_exactly_and_events_come_oldest_first(auditor, scene):
    user, door = scene["user"], scene["door"]
    follow(auditor, 2, door_id=door.door_id, event_types=["access.unlock_decided"])
    by_user = read(auditor, user_id=user.user_id)
    by_door = read(auditor, door_id=door.door_id)
    both = read(auditor, user_id=user.user_id, door_id=door.door_id)
    by_types = read(auditor, door_id=door.door_id, event_types=["access.unlock_decided", "permissions.door_changed"])
    assert by_user and {e.user_id for e in by_user} == {user.user_id}
    assert by_door and {e.door_id for e in by_door} == {door.door_id}
    assert both and {(e.user_id, e.door_id) for e in both} == {(user.user_id, door.door_id)}
    assert {e.type for e in by_types} == {"access.unlock_decided", "permissions.door_changed"}
    for events in (by_user, by_door, both, by_types):
        times = [e.source_time.ToNanoseconds() for e in events]
        assert times == sorted(times)
    # Every type is listed with no filter on types.
    assert {"permissions.door_changed", "permissions.grant_changed", "access.unlock_decided"} <= {
        e.type for e in by_door}


def test_the_time_range_is_half_open_on_source_time(auditor, perms, door_controller):
    door = new_door(perms)
    ctl = door_controller(door.door_id)
    for _ in range(3):
        ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, user_id=rid(), request_id=rid()), timeout=5)
    events = follow(auditor, 3, door_id=door.door_id, event_types=["access.unlock_decided"])
    t = [e.source_time for e in events]
    assert len({x.ToNanoseconds() for x in t}) == 3
    ids = [e.event_id for e in events]
    kinds = {"door_id": door.door_id, "event_types": ["access.unlock_decided"]}
    assert [e.event_id for e in read(auditor, start_time=t[1], end_time=t[2], **kinds)] == [ids[1]]
    assert [e.event_id for e in read(auditor, start_time=t[1], **kinds)] == ids[1:]
    assert [e.event_id for e in read(auditor, end_time=t[1], **kinds)] == ids[:1]
    assert read(auditor, end_time=ts(2001), **kinds) == []


# ---- batches ----------------------------------------------------------------------------------------------------

def test_max_batch_zero_or_one_sends_single_events_and_at_most_1000(auditor, scene):
    door = scene["door"]
    follow(auditor, 2, door_id=door.door_id, event_types=["access.unlock_decided"])
    for max_batch in (0, 1):
        replies = list(auditor.AuditLog(au.AuditLogRequest(door_id=door.door_id, max_batch=max_batch), timeout=10))
        assert replies and all(r.HasField("event") and not r.events and r.cursor for r in replies)
    replies = list(auditor.AuditLog(au.AuditLogRequest(door_id=door.door_id, max_batch=1000), timeout=10))
    assert len(replies) == 1 and not replies[0].HasField("event") and replies[0].events
    err = refused(lambda: auditor.AuditLog(au.AuditLogRequest(max_batch=1001), timeout=5), C.INVALID_ARGUMENT)
    assert "max_batch" in bad_fields(err) or "max_batch" in err.details()


# ---- the hash chain ---------------------------------------------------------------------------------------------

def test_each_event_links_to_the_one_stored_before_it(auditor, scene):
    door = scene["door"]
    (first,) = follow(auditor, 1, door_id=door.door_id, event_types=["permissions.door_changed"])
    follow(auditor, 2, door_id=door.door_id, event_types=["access.unlock_decided"])
    replies = list(auditor.AuditLog(au.AuditLogRequest(door_id=door.door_id,
                                                       event_types=["permissions.door_changed"]), timeout=10))
    after = read(auditor, cursor=replies[0].cursor)
    chain = [first, *after]
    assert len(chain) >= 5
    assert all(len(e.hash) == 32 for e in chain)
    stored = [e.stored_time.ToNanoseconds() for e in chain]
    assert stored == sorted(stored)
    assert [e.prev_hash for e in chain[1:]] == [e.hash for e in chain[:-1]]


def test_verify_chain_counts_the_events_stored_in_its_half_open_range(auditor, scene):
    everything = auditor.VerifyChain(au.VerifyChainRequest(), timeout=30)
    assert everything.ok and everything.events_checked > 0 and not everything.HasField("first_break")
    nothing = auditor.VerifyChain(au.VerifyChainRequest(end_time=ts(2001)), timeout=30)
    assert nothing.ok and nothing.events_checked == 0
    follow(auditor, 2, door_id=scene["door"].door_id, event_types=["access.unlock_decided"])
    last = read(auditor, door_id=scene["door"].door_id)[-1]
    upto = auditor.VerifyChain(au.VerifyChainRequest(end_time=last.stored_time), timeout=30)
    including = auditor.VerifyChain(au.VerifyChainRequest(start_time=last.stored_time), timeout=30)
    assert upto.ok and including.ok and including.events_checked >= 1
    assert upto.events_checked + including.events_checked >= everything.events_checked


def test_permission_outcomes_say_applied_deleted_rules_or_no_rules(auditor, perms):
    user, door = new_user(perms), new_door(perms)
    granted = perms.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id, door_id=door.door_id)))
    perms.RevokeAccess(pm.RevokeAccessRequest(grant_id=granted.grant.grant_id))
    perms.DeleteDoor(pm.DeleteDoorRequest(door_id=door.door_id))
    access = follow(auditor, 2, door_id=door.door_id, event_types=["permissions.access_changed"])
    assert [e.outcome for e in access] == ["RULES", "NO_RULES"]
    grants = follow(auditor, 2, door_id=door.door_id, event_types=["permissions.grant_changed"])
    assert {e.outcome for e in grants} <= {"APPLIED", "DELETED"}
    doors = follow(auditor, 2, door_id=door.door_id, event_types=["permissions.door_changed"])
    assert [e.outcome for e in doors] == ["APPLIED", "DELETED"]


def test_an_alarm_says_alarm_and_its_kind_with_revision_zero(auditor, perms, door_controller):
    mine, theirs = new_door(perms), new_door(perms)
    ctl = door_controller(mine.door_id)
    refused(lambda: ctl.Unlock(ac.UnlockRequest(door_id=theirs.door_id, user_id=rid(), request_id=rid()), timeout=5),
            C.PERMISSION_DENIED)
    (alarm,) = follow(auditor, 1, door_id=theirs.door_id, event_types=["access.security_alarm"])
    assert (alarm.outcome, alarm.reason, alarm.revision) == ("ALARM", alarm.envelope.security_alarm.kind, 0)
    assert alarm.action == "security_alarm"


def test_a_following_batch_is_sent_once_no_more_stored_events_match(auditor, perms, door_controller):
    # A batch is sent when full or when nothing more is stored: a live event does not wait for nine more.
    door = new_door(perms)
    ctl = door_controller(door.door_id)
    first = ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, user_id=rid(), request_id=rid()), timeout=5)
    replies = auditor.AuditLog(au.AuditLogRequest(door_id=door.door_id, event_types=["access.unlock_decided"],
                                                  follow=True, max_batch=10), timeout=20)
    got = []
    for reply in replies:
        got += [e.envelope.unlock_decided.decision_id for e in reply.events]
        if got == [first.decision_id]:
            second = ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, user_id=rid(), request_id=rid()), timeout=5)
        if len(got) == 2:
            break
    replies.cancel()
    assert got == [first.decision_id, second.decision_id]


def test_a_range_starting_when_the_door_was_answered_includes_that_decision(auditor, perms, door_controller):
    # The range is "on when the event happened at its source". A decision happened at the server_time its
    # answer carries (nanoseconds), though source_time keeps microseconds: a range starting at that very
    # moment holds the decision, one ending there does not.
    door = new_door(perms)
    ctl = door_controller(door.door_id)
    answer = ctl.Unlock(ac.UnlockRequest(door_id=door.door_id, user_id=rid(), request_id=rid()), timeout=5)
    follow(auditor, 1, door_id=door.door_id, event_types=["access.unlock_decided"])
    kinds = {"door_id": door.door_id, "event_types": ["access.unlock_decided"]}
    starting = read(auditor, start_time=answer.server_time, **kinds)
    assert [e.envelope.unlock_decided.decision_id for e in starting] == [answer.decision_id]
    assert read(auditor, end_time=answer.server_time, **kinds) == []
