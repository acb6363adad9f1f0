"""AuditLog over a closed time range: the order things happened, not the order audit stored them.

Decisions and permission changes reach audit on two streams, so an unlock
decided just before a lockdown can be stored after it. Over a closed range
(an end_time, no follow) the log is in occurrence order: source time, then
the causal rank (a change of revision R, then decisions by a view at R, then
R + 1), then storage order. Only gRPC is spoken here.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.tls import channel_credentials
from tests.e2e.helpers import Door, audit_events, card, rid

TYPES = ["permissions.door_changed", "access.unlock_decided"]


@pytest.fixture
def auditor(system, pki):
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        yield audit_pb2_grpc.AuditServiceStub(ch)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def rank(e: audit_pb2.AuditEvent) -> int:
    """The causal rank as audit.proto defines it."""
    if e.envelope.WhichOneof("payload") == "unlock_decided":
        return 2 * e.envelope.unlock_decided.view_revision + 1
    return 2 * e.revision


def events(stub, request) -> list[audit_pb2.AuditEvent]:
    items = list(stub.AuditLog(request, timeout=30))
    return [e for i in items for e in (i.events if request.max_batch > 1 else [i.event])]


def test_a_closed_range_lists_an_incident_in_the_order_it_happened(system, pki, admin, auditor):
    # A user may open a door; the door's controller is connected.
    start = now()
    user, door = admin.user(), admin.door()
    secret = rid()[:16]
    admin.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=1, secret=secret))
    g = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    # Unlocks decided right before a lockdown (their decisions travel on their own stream,
    # batched, so audit may store them after the lockdown), then the lockdown, then an unlock
    # the lockdown denies.
    granted = [ctl.unlock(credential=card(secret), min_revision=g.revision) for _ in range(3)]
    lockdown = admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=door.door_id, lockdown=True))
    denied = ctl.unlock(credential=card(secret), min_revision=lockdown.revision)
    ctl.close()
    assert denied.decision != granted[0].decision
    # Everything is stored (door created, locked down, four decisions) before the range closes.
    audit_events(system, pki, count=6, door_id=door.door_id, event_types=TYPES)
    end = now()

    # The closed range, without asking for an order: occurrence order, source times never going back.
    request = audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=TYPES, start_time=start, end_time=end)
    listed = events(auditor, request)
    assert len(listed) == 6
    keys = [(e.source_time.ToNanoseconds(), rank(e)) for e in listed]
    assert keys == sorted(keys)
    decision_ids = [e.envelope.unlock_decided.decision_id for e in listed]
    at = decision_ids.index
    locked = next(i for i, e in enumerate(listed) if e.revision == lockdown.revision)
    # The unlocks decided before the lockdown are listed before it, the denied one after it,
    # whatever order audit stored them in; each decision shows the view revision it reflects.
    assert all(at(d.decision_id) < locked for d in granted) and at(denied.decision_id) > locked
    assert all(listed[at(d.decision_id)].envelope.unlock_decided.view_revision < lockdown.revision
               for d in granted)
    assert listed[at(denied.decision_id)].envelope.unlock_decided.view_revision >= lockdown.revision

    # Storage order is still there, asked for explicitly: the same events, the chain's order.
    stored = events(auditor, audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=TYPES, start_time=start,
                                                       end_time=end, order=audit_pb2.AUDIT_ORDER_STORED))
    assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in listed)

    # Resuming from an occurrence cursor, single or batched, continues in occurrence order.
    first = next(iter(auditor.AuditLog(request, timeout=30)))
    request.cursor = first.cursor
    assert [e.event_id for e in events(auditor, request)] == [e.event_id for e in listed[1:]]
    request.max_batch, request.cursor = 4, ""
    batches = list(auditor.AuditLog(request, timeout=30))
    assert [len(b.events) for b in batches] == [4, 2]
    request.cursor = batches[0].cursor
    assert [e.event_id for e in events(auditor, request)] == [e.event_id for e in listed[4:]]


def test_an_order_that_cannot_hold_is_refused_precisely(auditor):
    ahead = now()
    ahead.seconds += 3600
    stored_cursor = next(iter(auditor.AuditLog(audit_pb2.AuditLogRequest(), timeout=10))).cursor
    closed = audit_pb2.AuditLogRequest(end_time=now())
    occurred_cursor = next(iter(auditor.AuditLog(closed, timeout=10))).cursor
    for request, field in (
            # Occurrence order needs a closed range: an end_time, not followed live.
            (audit_pb2.AuditLogRequest(order=audit_pb2.AUDIT_ORDER_OCCURRED), "order"),
            (audit_pb2.AuditLogRequest(order=audit_pb2.AUDIT_ORDER_OCCURRED, follow=True, end_time=ahead), "order"),
            (audit_pb2.AuditLogRequest(order=7, end_time=now()), "order"),
            # A cursor resumes only in the order it was issued in.
            (audit_pb2.AuditLogRequest(order=audit_pb2.AUDIT_ORDER_OCCURRED, end_time=now(),
                                       cursor=stored_cursor), "cursor"),
            (audit_pb2.AuditLogRequest(order=audit_pb2.AUDIT_ORDER_STORED, cursor=occurred_cursor), "cursor"),
            (audit_pb2.AuditLogRequest(cursor=occurred_cursor), "order")):
        with pytest.raises(grpc.RpcError) as info:
            list(auditor.AuditLog(request, timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in info.value.details()

    # A storage cursor on a closed range keeps storage order (a resume begun before stays exact).
    end = now()
    resumed = auditor.AuditLog(audit_pb2.AuditLogRequest(end_time=end, cursor=stored_cursor, max_batch=1000),
                               timeout=10)
    explicit = auditor.AuditLog(audit_pb2.AuditLogRequest(end_time=end, cursor=stored_cursor, max_batch=1000,
                                                          order=audit_pb2.AUDIT_ORDER_STORED), timeout=10)
    resumed_ids = [e.event_id for b in resumed for e in b.events]
    # A prefix: storage order only grows at its end, and an event may be stored between the calls.
    assert [e.event_id for b in explicit for e in b.events][:len(resumed_ids)] == resumed_ids
