"""The shared server runner: mTLS only, health and reflection answer, strangers are refused."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devstack import certs
from latchkit import server
from latchkit.settings import ServerSettings, TlsSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    home = tmp_path_factory.mktemp("pki")
    certs.ensure_dev_certs(home)
    foreign = tmp_path_factory.mktemp("foreign")
    certs.create_ca(foreign, common_name="Some other CA")
    certs.issue(foreign, foreign, "role", "admin")
    return home, foreign


def tls(directory, name) -> TlsSettings:
    return TlsSettings(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}-key.pem")


@pytest.fixture
async def running(pki):
    home, _ = pki
    settings = ServerSettings(
        host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5,
        max_message_bytes=64 * 1024, tls=tls(home, "permissions"),
    )
    spec = server.ServiceSpec(name="probe", register=lambda s: ())
    srv = await server.start(settings, spec)
    yield srv
    await srv.stop(0.5)


def channel(port: int, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


def mtls(directory, name) -> grpc.ChannelCredentials:
    t = tls(directory, name)
    return grpc.ssl_channel_credentials(t.ca_file.read_bytes(), t.key_file.read_bytes(), t.cert_file.read_bytes())


async def test_health_answers_over_mtls(running, pki):
    home, _ = pki
    async with channel(running.port, mtls(home, "admin")) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_health(running, pki):
    home, _ = pki
    async with channel(running.port, mtls(home, "auditor")) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert "grpc.health.v1.Health" in names


async def test_client_without_certificate_is_refused(running, pki):
    home, _ = pki
    creds = grpc.ssl_channel_credentials((home / "ca.pem").read_bytes())
    async with channel(running.port, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(running, pki):
    home, foreign = pki
    creds = grpc.ssl_channel_credentials(
        (home / "ca.pem").read_bytes(),
        (foreign / "admin-key.pem").read_bytes(),
        (foreign / "admin.pem").read_bytes(),
    )
    async with channel(running.port, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused(running):
    async with grpc.aio.insecure_channel(f"localhost:{running.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
