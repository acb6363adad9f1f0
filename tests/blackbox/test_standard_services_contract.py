"""The standard services every Latchkey process serves: gRPC health and server reflection (v1 and v1alpha)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.blackbox.conftest import channel, refused

API = {"permissions": "latchkey.permissions.v1.PermissionsService",
       "access": "latchkey.access.v1.AccessService",
       "audit": "latchkey.audit.v1.AuditService"}
SERVICES = list(API)


@pytest.mark.parametrize("service", SERVICES)
def test_health_serves_the_server_and_its_api_and_knows_no_other_name(system, pki, service):
    with channel(system, pki, service, "auditor") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", API[service]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        refused(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5),
                grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize("service", SERVICES)
def test_reflection_lists_the_api_and_describes_it(system, pki, service, version):
    with channel(system, pki, service, "auditor") as ch:
        # v1 and v1alpha have the same messages on the wire.
        call = ch.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                                  reflection_pb2.ServerReflectionRequest(file_containing_symbol=API[service])]),
                            timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {API[service], "grpc.health.v1.Health"} <= names, names
    assert replies[1].file_descriptor_response.file_descriptor_proto, replies[1]
