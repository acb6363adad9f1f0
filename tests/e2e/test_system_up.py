"""`make run` in miniature: all three services start from their entry points and answer over mTLS."""

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from latchkit.tls import channel_credentials
from ops.run import health_of

EXPECTED = {
    "permissions": "latchkey.permissions.v1.PermissionsService",
    "access": "latchkey.access.v1.AccessService",
    "audit": "latchkey.audit.v1.AuditService",
}


def test_every_service_is_healthy(system):
    assert {name: health_of(t) for name, t in system.targets.items()} == {
        name: "SERVING" for name in system.targets
    }


def test_reflection_lists_each_service_api(system, pki):
    for name, target in system.targets.items():
        with grpc.secure_channel(target, channel_credentials(pki.tls("auditor"))) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
        assert EXPECTED[name] in names, (name, names)
