"""Identity means something on every call: the allow/deny table, cross-door, throttling, limits.

The expected table is written out here by hand, independently of
latchkit.authz, so a wrong rule there fails this test.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from latchkey.access.v1 import access_pb2
from latchkey.audit.v1 import audit_pb2
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.revocation import RevocationList
from latchkit.tls import channel_credentials
from tests.e2e.helpers import Admin, Door, audit_events, card, rid

SERVICES = {"permissions": (pm, "PermissionsService"), "access": (access_pb2, "AccessService"),
            "audit": (audit_pb2, "AuditService")}
PERMISSION_READS = {"GetUser", "ListUsers", "GetDoor", "ListDoors", "GetGroup", "ListGroups", "ListGroupMembers",
                    "GetSchedule", "ListSchedules", "GetCredential", "ListCredentials", "GetGrant", "ListGrants",
                    "ExplainAccess"}
# The access service also reads the snapshot it rebuilds its view from; nothing else writes or exports.
ACCESS_SERVICE_CALLS = PERMISSION_READS | {"ExportAccessSnapshot"}


def expected_allowed(principal: str, service: str, method: str) -> bool:
    if principal == "admin":
        return service in ("permissions", "audit") or method in ("GetViewRevision", "WaitForRevision")
    if principal == "auditor":
        return service == "audit"
    if principal == "door":
        return (service, method) == ("access", "Unlock")
    if principal == "service-access":
        return service == "permissions" and method in ACCESS_SERVICE_CALLS
    return False  # other services, unknown roles: nothing


def rpcs():
    for service, (module, name) in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            yield service, method


@pytest.fixture(scope="module")
def identities(pki):
    revoked = pki.issue("role", "admin-revoked-later", file_stem="revoked-admin")
    RevocationList(pki.dir / "revoked.txt").revoke(revoked.cert_file.read_bytes(), note="test")
    return {
        "admin": pki.tls("admin"),
        "auditor": pki.tls("auditor"),
        "door": pki.issue("door", "matrix-door"),
        "service-access": pki.issue("service", "access", file_stem="svc-access"),
        "service-audit": pki.issue("service", "audit", file_stem="svc-audit"),
        "unknown-role": pki.issue("role", "janitor"),
        "revoked": revoked,
    }


@pytest.mark.parametrize("principal", ["admin", "auditor", "door", "service-access", "service-audit",
                                       "unknown-role", "revoked"])
def test_allow_deny_matrix(system, identities, principal):
    wrong = []
    for service, method in rpcs():
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        with grpc.secure_channel(system.targets[service], channel_credentials(identities[principal])) as ch:
            path = f"/{method.containing_service.full_name}/{method.name}"
            kind = ch.unary_stream if method.server_streaming else ch.unary_unary
            call = kind(path, request_serializer=request_cls.SerializeToString,
                        response_deserializer=response_cls.FromString)
            request = request_cls()
            if method.name == "Unlock":
                request.door_id = "matrix-door"
            try:
                result = call(request, timeout=3)
                if method.server_streaming:
                    next(iter(result), None)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
        if principal == "revoked":
            expected = {grpc.StatusCode.UNAUTHENTICATED}
        elif expected_allowed(principal, service, method.name):
            expected = None  # anything but a refusal
        else:
            expected = {grpc.StatusCode.PERMISSION_DENIED}
        refused = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        if (expected is None and refused) or (expected is not None and code not in expected):
            wrong.append((service, method.name, code.name))
    assert wrong == []


def test_a_door_cannot_open_another_door_and_the_attempt_is_audited(system, pki):
    admin = Admin(system, pki)
    door_a, door_b = admin.door(), admin.door()
    ctl = Door(system, pki, door_a.door_id)
    with pytest.raises(grpc.RpcError) as info:
        ctl.unlock(user_id=admin.user().user_id, door_id=door_b.door_id)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    alarms = audit_events(system, pki, count=1, door_id=door_b.door_id, event_types=["access.security_alarm"])
    alarm = alarms[0].event
    assert (alarm.reason, alarm.actor) == ("WRONG_DOOR_IDENTITY", f"spiffe://latchkey/door/{door_a.door_id}")
    ctl.close()
    admin.close()


def test_repeated_denials_of_one_credential_are_throttled_and_raise_an_alarm(system, pki):
    admin = Admin(system, pki)
    door = admin.door()
    ctl = Door(system, pki, door.door_id)
    guess = card("probe-" + rid()[:10])
    answers = [ctl.unlock(credential=guess).reason for _ in range(12)]
    # Ten plain denials (the default limit), then RATE_LIMITED.
    assert answers[:10] == [8] * 10  # UNKNOWN_CREDENTIAL
    assert set(answers[10:]) == {14}  # RATE_LIMITED
    alarm = audit_events(system, pki, count=1, door_id=door.door_id, event_types=["access.security_alarm"])[0]
    assert alarm.event.reason == "CREDENTIAL_DENIALS_THROTTLED"
    assert "probe-" not in str(alarm.event)  # the guessed secret never reaches the log
    ctl.close()
    admin.close()


def test_oversize_requests_are_refused(system, pki):
    admin = Admin(system, pki)
    with pytest.raises(grpc.RpcError) as info:
        # Over the permissions service's 1 MiB (its batches carry up to 1,000 items).
        admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="x" * 1_100_000)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    admin.close()
