"""AccessService does what its contract (access.proto, events.proto, audit.proto) says, over gRPC only."""

from __future__ import annotations

import time

import grpc
import pytest
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev

from latchkit.tls import channel_credentials
from tests.e2e.helpers import Door, audit_events, rid

UNREACHABLE = 10**12


@pytest.fixture
def access_as_admin(system, pki):
    with grpc.secure_channel(system.targets["access"], channel_credentials(pki.tls("admin"))) as channel:
        yield access_pb2_grpc.AccessServiceStub(channel)


def test_unlock_requires_a_request_id_and_records_nothing_without_one(system, pki, admin):
    user, door = admin.user(), admin.door()
    ctl = Door(system, pki, door.door_id)
    try:
        # Without a request_id, or with one that breaks the 64-printable rule: refused, naming the field.
        for request_id in ("", "x" * 65, "bad\nid"):
            request = access_pb2.UnlockRequest(door_id=door.door_id, user_id=user.user_id, request_id=request_id)
            with pytest.raises(grpc.RpcError) as info:
                ctl.stub.Unlock(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request_id
            assert "request_id" in info.value.details()
        # A well-formed call is answered; it is the first decision the audit log holds for the door.
        answer = ctl.unlock(user_id=user.user_id, request_id="press-" + rid())
        assert answer.decision == ev.DECISION_DENIED
        events = audit_events(system, pki, count=1, door_id=door.door_id, event_types=["access.unlock_decided"])
        assert events[0].event.envelope.unlock_decided.decision_id == answer.decision_id
    finally:
        ctl.close()


def test_wait_for_revision_waits_one_second_without_a_timeout(access_as_admin):
    started = time.monotonic()
    answer = access_as_admin.WaitForRevision(access_pb2.WaitForRevisionRequest(revision=UNREACHABLE), timeout=10)
    waited = time.monotonic() - started
    assert not answer.reached
    assert 0.9 <= waited < 3, waited


def test_wait_for_revision_waits_at_most_ten_seconds(access_as_admin):
    # A 13 s timeout is not an error: it waits 10 s, then says the revision was not reached.
    started = time.monotonic()
    answer = access_as_admin.WaitForRevision(
        access_pb2.WaitForRevisionRequest(revision=UNREACHABLE, timeout={"seconds": 13}), timeout=30)
    waited = time.monotonic() - started
    assert not answer.reached
    assert 9.9 <= waited < 12, waited


def test_wait_for_revision_zero_timeout_answers_at_once_and_negative_is_refused(access_as_admin):
    started = time.monotonic()
    answer = access_as_admin.WaitForRevision(
        access_pb2.WaitForRevisionRequest(revision=UNREACHABLE, timeout={"seconds": 0}), timeout=10)
    assert not answer.reached and time.monotonic() - started < 0.5
    with pytest.raises(grpc.RpcError) as info:
        access_as_admin.WaitForRevision(
            access_pb2.WaitForRevisionRequest(revision=1, timeout={"seconds": -1}), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout" in info.value.details()


def test_a_decision_event_carries_revision_zero_and_its_view_revision(system, pki, admin):
    user, door = admin.user(), admin.door()
    granted = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    try:
        answer = ctl.unlock(user_id=user.user_id, min_revision=granted.revision)
    finally:
        ctl.close()
    assert answer.decision == ev.DECISION_GRANTED and answer.view_revision >= granted.revision
    # The envelope's revision is a permissions transaction's; a decision names its view's revision itself.
    (event,) = audit_events(system, pki, count=1, door_id=door.door_id, event_types=["access.unlock_decided"])
    assert event.event.envelope.revision == 0
    assert event.event.revision == 0
    assert event.event.envelope.unlock_decided.view_revision == answer.view_revision


def test_an_unknown_user_or_door_is_no_grant(system, pki, admin):
    # The view holds (door, user) pairs, not a directory: UNKNOWN_USER and UNKNOWN_DOOR are reserved.
    door = admin.door()
    ctl = Door(system, pki, door.door_id)
    try:
        answer = ctl.unlock(user_id="no-such-user-" + rid())
    finally:
        ctl.close()
    assert (answer.decision, answer.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT)
    nowhere = Door(system, pki, "no-such-door-" + rid())
    try:
        answer = nowhere.unlock(user_id=admin.user().user_id)
    finally:
        nowhere.close()
    assert (answer.decision, answer.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT)
