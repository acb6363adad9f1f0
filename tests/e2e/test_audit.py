"""The audit log on the running system: complete, ordered, live without seams, resumable, crash-safe."""

from __future__ import annotations

import threading

import grpc
import pytest
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.tls import channel_credentials
from tests.e2e.helpers import Door, audit_events, card, rid

ADMIN_URI = "spiffe://latchkey/role/admin"


@pytest.fixture
def auditor(system, pki):
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        yield audit_pb2_grpc.AuditServiceStub(ch)


def granted_door(system, pki, admin):
    user, door = admin.user(), admin.door()
    secret = rid()[:16]
    admin.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=1, secret=secret))
    g = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    ctl.unlock(credential=card(secret), min_revision=g.revision)
    return user, door, card(secret), ctl, g


def test_a_scenario_appears_completely_with_its_actors(system, pki, admin):
    # Permission changes by the admin, then unlocks by the door, all for one user.
    user, door, presented, ctl, g = granted_door(system, pki, admin)
    revoked = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id))
    denied = ctl.unlock(credential=presented, min_revision=revoked.revision)
    ctl.close()
    expected_types = ["permissions.user_changed", "permissions.credential_changed", "permissions.grant_changed",
                      "permissions.access_changed", "permissions.grant_changed", "permissions.access_changed"]
    changes = audit_events(system, pki, count=len(expected_types), user_id=user.user_id,
                           event_types=sorted(set(expected_types)))
    assert [e.event.type for e in changes] == expected_types
    assert {e.event.actor for e in changes} == {ADMIN_URI}
    revisions = [e.event.revision for e in changes]
    assert revisions == sorted(revisions) and revisions[-1] == revoked.revision
    decisions = audit_events(system, pki, count=2, door_id=door.door_id, event_types=["access.unlock_decided"])
    assert [(e.event.outcome, e.event.reason) for e in decisions] == [("GRANTED", "GRANTED"), ("DENIED", "NO_GRANT")]
    assert decisions[-1].event.envelope.unlock_decided.decision_id == denied.decision_id
    assert decisions[-1].event.actor == f"spiffe://latchkey/door/{door.door_id}"
    assert all(e.event.stored_time.ToNanoseconds() >= e.event.source_time.ToNanoseconds() for e in decisions)


def test_follow_has_no_gap_or_duplicate_at_the_seam(system, pki, admin, auditor):
    user, door, presented, ctl, _ = granted_door(system, pki, admin)
    history = [ctl.unlock(credential=presented).decision_id for _ in range(5)]
    seen: list[str] = []
    cursors: list[str] = []
    request = audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=["access.unlock_decided"], follow=True)
    stream = auditor.AuditLog(request, timeout=30)
    ready = threading.Event()

    def read():
        for item in stream:
            seen.append(item.event.envelope.unlock_decided.decision_id)
            cursors.append(item.cursor)
            if len(seen) >= 6:
                ready.set()  # the history is in; live events follow
            if len(seen) >= 6 + 15:
                return

    reader = threading.Thread(target=read)
    reader.start()
    assert ready.wait(20)
    live = [ctl.unlock(credential=presented).decision_id for _ in range(15)]
    reader.join(30)
    stream.cancel()
    ctl.close()
    assert seen[1:] == history + live
    assert len(set(cursors)) == len(cursors)


def test_a_client_resumes_from_its_cursor(system, pki, admin, auditor):
    user, door, presented, ctl, _ = granted_door(system, pki, admin)
    ids = [ctl.unlock(credential=presented).decision_id for _ in range(9)]
    ctl.close()
    # Everything is stored before the reads below.
    audit_events(system, pki, count=10, door_id=door.door_id, event_types=["access.unlock_decided"])
    request = audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=["access.unlock_decided"])
    first = []
    for item in auditor.AuditLog(request, timeout=10):
        first.append(item)
        if len(first) == 4:
            break  # the client goes away after four events
    request.cursor = first[-1].cursor
    rest = list(auditor.AuditLog(request, timeout=10))
    got = [i.event.envelope.unlock_decided.decision_id for i in first + rest]
    assert got[1:] == ids


def test_audit_killed_mid_ingest_loses_and_duplicates_nothing(system, pki, admin):
    user, door, presented, ctl, _ = granted_door(system, pki, admin)
    ids = [ctl.unlock(credential=presented).decision_id for _ in range(30)]
    system.kill("audit")
    try:
        ids += [ctl.unlock(credential=presented).decision_id for _ in range(30)]
    finally:
        system.start("audit")
    ids += [ctl.unlock(credential=presented).decision_id for _ in range(10)]
    ctl.close()
    events = audit_events(system, pki, count=71, timeout=60, door_id=door.door_id,
                          event_types=["access.unlock_decided"])
    got = [e.event.envelope.unlock_decided.decision_id for e in events][1:]
    assert got == ids


def test_a_slow_reader_does_not_delay_ingest(system, pki, admin, auditor):
    user, door, presented, ctl, _ = granted_door(system, pki, admin)
    slow = auditor.AuditLog(audit_pb2.AuditLogRequest(follow=True), timeout=60)
    next(slow)  # reads one event, then never again
    ids = [ctl.unlock(credential=presented).decision_id for _ in range(200)]
    ctl.close()
    events = audit_events(system, pki, count=201, timeout=30, door_id=door.door_id,
                          event_types=["access.unlock_decided"])
    assert [e.event.envelope.unlock_decided.decision_id for e in events][1:] == ids
    slow.cancel()


def test_verify_chain_over_the_live_store(auditor):
    reply = auditor.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=30)
    assert reply.ok and reply.events_checked > 0


def test_bad_filters_are_refused_precisely(auditor):
    for request, field in ((audit_pb2.AuditLogRequest(event_types=["nope"]), "event_types[0]"),
                           (audit_pb2.AuditLogRequest(cursor="forged"), "cursor")):
        with pytest.raises(grpc.RpcError) as info:
            list(auditor.AuditLog(request, timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details()


def test_batched_reads_carry_the_same_events_and_resume_from_a_batch_cursor(system, pki, admin, auditor):
    user, door, presented, ctl, _ = granted_door(system, pki, admin)
    ids = [ctl.unlock(credential=presented).decision_id for _ in range(7)]
    ctl.close()
    audit_events(system, pki, count=8, door_id=door.door_id, event_types=["access.unlock_decided"])
    request = audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=["access.unlock_decided"], max_batch=3)
    batches = list(auditor.AuditLog(request, timeout=10))
    assert [len(b.events) for b in batches] == [3, 3, 2] and not batches[0].HasField("event")
    got = [e.envelope.unlock_decided.decision_id for b in batches for e in b.events]
    assert got[1:] == ids
    request.cursor = batches[0].cursor
    rest = [e.envelope.unlock_decided.decision_id for b in auditor.AuditLog(request, timeout=10) for e in b.events]
    assert rest == got[3:]
    with pytest.raises(grpc.RpcError) as info:
        list(auditor.AuditLog(audit_pb2.AuditLogRequest(max_batch=5000), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
