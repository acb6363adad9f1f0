"""AuditLog with follow and an end_time: following is ignored past end_time, so the stream ends."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.tls import channel_credentials
from tests.e2e.helpers import Admin, audit_events


@pytest.fixture
def auditor(system, pki):
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        yield audit_pb2_grpc.AuditServiceStub(ch)


def at(seconds_from_now: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns() + int(seconds_from_now * 1e9))
    return stamp


def test_follow_with_an_end_time_in_the_past_returns_the_history_and_ends(system, pki, auditor):
    # A door is created: its event reaches the audit log.
    admin = Admin(system, pki)
    door = admin.door()
    admin.close()
    stored = audit_events(system, pki, count=1, door_id=door.door_id)

    # Follow with an end_time already gone: the history up to it, then the end of the
    # stream (status OK), well before the call's deadline.
    request = audit_pb2.AuditLogRequest(door_id=door.door_id, follow=True, end_time=at(0))
    began = time.monotonic()
    items = list(auditor.AuditLog(request, timeout=30))
    assert time.monotonic() - began < 20
    assert [i.event.event_id for i in items] == [e.event.event_id for e in stored]

    # Batched, the same.
    request.max_batch = 100
    batches = list(auditor.AuditLog(request, timeout=30))
    assert [e.event_id for b in batches for e in b.events] == [e.event.event_id for e in stored]


def test_follow_with_an_end_time_ahead_ends_when_the_clock_passes_it(system, pki, auditor):
    # A door exists; an auditor follows it until 4 s from now.
    admin = Admin(system, pki)
    door = admin.door()
    audit_events(system, pki, count=1, door_id=door.door_id)
    began = time.monotonic()
    end = at(4)
    stream = auditor.AuditLog(audit_pb2.AuditLogRequest(door_id=door.door_id, follow=True, end_time=end),
                              timeout=60)

    # A change to the door while the stream is live.
    admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=door.door_id, lockdown=True))
    admin.close()

    # The stream ends by itself (status OK) once end_time has passed, not at the deadline;
    # everything it carried happened before end_time, oldest first.
    items = list(stream)
    elapsed = time.monotonic() - began
    assert 3.5 <= elapsed < 50
    assert items and items[0].event.type == "permissions.door_changed"
    times = [i.event.source_time.ToNanoseconds() for i in items]
    assert times == sorted(times) and times[-1] < end.ToNanoseconds()
