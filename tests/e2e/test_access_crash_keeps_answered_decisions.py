"""SIGKILL of access under load: every decision a door received is in the audit log afterwards.

With acked durability (the default) an answer leaves only once its decision is acknowledged
by JetStream or fsynced in the spool; a restarted access drains its spool. Decisions that
were recorded but never answered may appear too; none that was answered may be missing.
"""

from __future__ import annotations

import threading
import time

import grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.tls import channel_credentials
from tests.e2e.helpers import Door, card, rid

CONTROLLERS = 8
ANSWERS_BEFORE_THE_KILL = 400


def audited_decisions(system, pki, door_id: str, wanted: set[str], limit_s: float) -> set[str]:
    """Decision ids the audit log holds for `door_id`, followed until `wanted` are all seen or `limit_s`."""
    seen: set[str] = set()
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        stream = audit_pb2_grpc.AuditServiceStub(ch).AuditLog(audit_pb2.AuditLogRequest(
            follow=True, door_id=door_id, event_types=["access.unlock_decided"]), timeout=limit_s)
        try:
            for item in stream:
                seen.add(item.event.envelope.unlock_decided.decision_id)
                if wanted <= seen:
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            stream.cancel()
    return seen


def test_access_killed_under_load_loses_no_answered_decision(system, pki, admin):
    # A door with a granted card.
    user, door = admin.user(), admin.door()
    secret = rid()[:16]
    admin.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=1, secret=secret))
    grant = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    answered = [ctl.unlock(credential=card(secret), min_revision=grant.revision).decision_id]
    # Several controllers keep unlocking; each answer they receive is noted.
    stop = threading.Event()

    def controller() -> None:
        while not stop.is_set():
            try:
                answered.append(ctl.unlock(credential=card(secret), timeout=2).decision_id)
            except grpc.RpcError:
                return  # access is gone
    threads = [threading.Thread(target=controller) for _ in range(CONTROLLERS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(answered) < ANSWERS_BEFORE_THE_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        # The crash: SIGKILL in the middle of the traffic, calls in flight.
        system.kill("access")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        ctl.close()
    # The restart drains the spool; then every answered decision must be in the audit log.
    system.start("access")
    wanted = set(answered)
    missing = wanted - audited_decisions(system, pki, door.door_id, wanted, limit_s=30)
    assert not missing, f"{len(missing)} of {len(wanted)} answered decisions are not in the audit log"
