"""What off-the-shelf gRPC tooling expects of the runner: reflection v1 and v1alpha, and
go-grpc-prometheus metrics (grpc_server_*) for every call, streams included."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from devstack import certs
from latchkit import server
from latchkit.settings import ServerSettings, TlsSettings
from tests.waiting import until

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    certs.ensure_dev_certs(directory)
    return directory


def tls(directory, name) -> TlsSettings:
    return TlsSettings(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}-key.pem")


@pytest.fixture
async def running(home):
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5,
                              max_message_bytes=64 * 1024, tls=tls(home, "permissions"))
    srv = await server.start(settings, server.ServiceSpec(name="probe", register=lambda s: ()))
    yield srv
    await srv.stop(0.5)


def channel(port: int, directory) -> grpc.aio.Channel:
    t = tls(directory, "admin")
    creds = grpc.ssl_channel_credentials(t.ca_file.read_bytes(), t.key_file.read_bytes(), t.cert_file.read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def reflect(ch: grpc.aio.Channel, method: str, request) -> reflection_pb2.ServerReflectionResponse:
    """One request on a reflection stream; v1 messages are v1alpha's on the wire."""
    call = ch.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)(timeout=5)
    await call.write(request)
    reply = await call.read()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    return reply


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("method", [V1, V1ALPHA])
async def test_reflection_answers_in_both_versions(running, home, method):
    async with channel(running.port, home) as ch:
        listed = await reflect(ch, method, reflection_pb2.ServerReflectionRequest(list_services=""))
        described = await reflect(ch, method, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    # A client that describes the v1 service (grpcurl describe) finds it, in its own package.
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    v1 = next(f for f in files if f.package == "grpc.reflection.v1")
    assert [s.name for s in v1.service] == ["ServerReflection"]
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_calls_are_counted_with_grpc_labels(running, home):
    unary = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_type": "unary"}
    bidi = {"grpc_service": "grpc.reflection.v1.ServerReflection", "grpc_method": "ServerReflectionInfo",
            "grpc_type": "bidi_stream"}
    ok = {**unary, "grpc_code": "OK"}
    counted = [("grpc_server_started_total", unary), ("grpc_server_handled_total", ok),
               ("grpc_server_handling_seconds_count", ok)]
    before = [sample(name, **labels) for name, labels in counted]
    # Three health checks and one reflection stream.
    async with channel(running.port, home) as ch:
        for _ in range(3):
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        await reflect(ch, V1, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert [sample(name, **labels) - b for (name, labels), b in zip(counted, before, strict=True)] == [3, 3, 3]
    # The stream is counted too, when it closes.
    assert sample("grpc_server_started_total", **bidi) >= 1
    assert sample("grpc_server_handled_total", **bidi, grpc_code="OK") >= 1


async def test_a_stream_the_client_closes_is_counted_as_cancelled(running, home):
    watch = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch", "grpc_type": "server_stream",
             "grpc_code": "CANCELLED"}
    before = sample("grpc_server_handled_total", **watch)
    # A follow-like stream (health Watch stays open): read its first answer, then hang up.
    async with channel(running.port, home) as ch:
        call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
        assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    # The server sees the cancel a moment later.
    async def counted() -> bool:
        return sample("grpc_server_handled_total", **watch) > before

    await until(counted, "the closed Watch counted as CANCELLED", limit_s=5)
    assert sample("grpc_server_handling_seconds_count", **watch) >= 1


def test_handling_buckets_reach_hours():
    """An AuditLog follow stays open for hours: its duration must fall in a bucket, not +Inf."""
    from latchkit.metrics import HANDLING_SECONDS

    bounds = [b for b in HANDLING_SECONDS._upper_bounds if b != float("inf")]
    assert bounds[0] <= 0.0001 and bounds[-1] >= 6 * 3600
