"""Scenarios across the three services, through their public APIs only."""

from __future__ import annotations

import uuid

import grpc
import pytest
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit.tls import channel_credentials

GRANTED, DENIED = ev.DECISION_GRANTED, ev.DECISION_DENIED


@pytest.fixture
def admin(system, pki):
    with grpc.secure_channel(system.targets["permissions"], channel_credentials(pki.tls("admin"))) as ch:
        yield permissions_pb2_grpc.PermissionsServiceStub(ch)


def door_client(system, pki, door_id: str):
    channel = grpc.secure_channel(system.targets["access"], channel_credentials(pki.issue("door", door_id)))
    return channel, access_pb2_grpc.AccessServiceStub(channel)


def rid() -> str:
    return uuid.uuid4().hex


def make_user_and_door(admin):
    user = admin.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name="Ada")), timeout=10).user
    door = admin.CreateDoor(
        pm.CreateDoorRequest(request_id=rid(), door=pm.Door(name="Lab", time_zone="Europe/Madrid")), timeout=10
    ).door
    return user, door


def unlock(stub, door_id, user_id=None, credential=None, min_revision=0):
    request = access_pb2.UnlockRequest(door_id=door_id, request_id=rid(), min_revision=min_revision)
    if credential is not None:
        request.credential.CopyFrom(credential)
    else:
        request.user_id = user_id
    return stub.Unlock(request, timeout=5)


def test_grant_then_revoke_is_seen_at_the_door_and_in_the_audit_log(system, pki, admin):
    # An admin creates a user and a door; nobody may open it yet.
    user, door = make_user_and_door(admin)
    channel, door_stub = door_client(system, pki, door.door_id)
    with channel:
        # A card is issued and access granted; the door honours the grant at its revision.
        card = admin.IssueCredential(pm.IssueCredentialRequest(
            request_id=rid(), user_id=user.user_id, kind=ev.CREDENTIAL_KIND_CARD, secret="04:A2:19:7F"), timeout=10)
        granted = admin.GrantAccess(pm.GrantAccessRequest(
            request_id=rid(), grant=pm.Grant(user_id=user.user_id, door_id=door.door_id)), timeout=10)
        assert granted.revision > card.revision
        presented = access_pb2.PresentedCredential(kind=ev.CREDENTIAL_KIND_CARD, secret="04:A2:19:7F")
        answer = unlock(door_stub, door.door_id, credential=presented, min_revision=granted.revision)
        assert (answer.decision, answer.reason) == (GRANTED, ev.DECISION_REASON_GRANTED)
        assert answer.view_revision >= granted.revision
        # The grant is revoked; the very next unlock at that revision is denied.
        revoked = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=granted.grant.grant_id), timeout=10)
        answer = unlock(door_stub, door.door_id, credential=presented, min_revision=revoked.revision)
        assert (answer.decision, answer.reason) == (DENIED, ev.DECISION_REASON_NO_GRANT)
        # ExplainAccess, the oracle, agrees.
        explained = admin.ExplainAccess(pm.ExplainAccessRequest(user_id=user.user_id, door_id=door.door_id), timeout=10)
        assert explained.decision == DENIED

    # The auditor sees both unlock decisions for this door, oldest first.
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        request = audit_pb2.AuditLogRequest(door_id=door.door_id, event_types=["access.unlock_decided"],
                                            follow=True)
        outcomes = []
        for item in stub.AuditLog(request, timeout=20):
            outcomes.append(item.event.envelope.unlock_decided.decision)
            if len(outcomes) == 2:
                break
    assert outcomes == [GRANTED, DENIED]


def test_unknown_credential_is_denied_with_a_reason(system, pki, admin):
    _, door = make_user_and_door(admin)
    channel, stub = door_client(system, pki, door.door_id)
    with channel:
        presented = access_pb2.PresentedCredential(kind=ev.CREDENTIAL_KIND_PIN, secret="000000")
        answer = unlock(stub, door.door_id, credential=presented)
    assert (answer.decision, answer.reason) == (DENIED, ev.DECISION_REASON_UNKNOWN_CREDENTIAL)
