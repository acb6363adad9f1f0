"""Audit health tells the truth: with NATS down ingest waits and reads still serve, so the service
stays SERVING and the NATS dependency says NOT_SERVING; it is SERVING again by itself as soon as
NATS returns. (The embedded store is a local file: there is no store dependency to report.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import pytest
from grpc import StatusCode
from grpc.aio import AioRpcError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import Stack, StackPorts
from latchkit import server
from services.audit import bootstrap
from services.audit.settings import AuditSettings
from tests.integration.conftest import aio_channel, server_settings
from tests.waiting import until

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def own_nats(stack):
    """A NATS of this test's own, under the test stack's state directory: stopping it stops no one else."""
    own = Stack(stack.state_dir / f"health-audit-{uuid.uuid4().hex[:6]}", StackPorts.free())
    await asyncio.to_thread(own.start_component, "nats")
    yield own
    with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
        own.thaw_component("nats")  # a hung NATS is let go before it is stopped
    await asyncio.to_thread(own.stop_component, "nats")


@pytest.fixture
async def stub(own_nats, pki, tmp_path, monkeypatch):
    """An audit server (ingest included, embedded store) on the private NATS; yields a health stub."""
    monkeypatch.setenv("LATCHKEY_NATS_URL", own_nats.urls().nats_url)
    monkeypatch.setenv("LATCHKEY_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("LATCHKEY_SCYLLA_HOSTS", raising=False)
    monkeypatch.delenv("LATCHKEY_AUDIT_STORE", raising=False)
    settings = dataclasses.replace(AuditSettings.from_env(), server=server_settings(pki.tls("audit")))
    app = bootstrap.build(settings)
    await app.store.open()
    running = await server.start(settings.server, app.spec())
    try:
        async with aio_channel(running.port, pki.tls("admin")) as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        await running.stop(0.5)
        await app.store.close()


async def status(stub, name: str) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status


OUTAGES = {
    # Stopped: connections are refused.
    "stopped": (lambda own: own.stop_component("nats"), lambda own: own.start_component("nats")),
    # Hung (SIGSTOP): connections stay open and nothing answers; each probe gives up after its 1 s bound.
    "hung": (lambda own: own.freeze_component("nats"), lambda own: own.thaw_component("nats")),
}


@pytest.mark.parametrize("outage", OUTAGES)
async def test_audit_stays_serving_degraded_while_nats_is_out_and_recovers_by_itself(own_nats, stub, outage):
    begin, end = OUTAGES[outage]
    # With NATS up, audit and its NATS dependency are SERVING; an embedded store is not a dependency.
    assert await status(stub, "") == SERVING
    assert await status(stub, "latchkey.dependency.nats") == SERVING
    with pytest.raises(AioRpcError) as unknown:
        await status(stub, "latchkey.dependency.audit_store")
    assert unknown.value.code() == StatusCode.NOT_FOUND

    # NATS stops or hangs: the dependency says NOT_SERVING, the service (and its reads) stay SERVING.
    await asyncio.to_thread(begin, own_nats)

    async def degraded() -> bool:
        return await status(stub, "latchkey.dependency.nats") == NOT_SERVING
    await until(degraded, "the NATS dependency NOT_SERVING", limit_s=10)
    assert await status(stub, "") == SERVING
    assert await status(stub, "latchkey.audit.v1.AuditService") == SERVING

    # NATS is back: the dependency is SERVING again by itself.
    await asyncio.to_thread(end, own_nats)

    async def back() -> bool:
        return await status(stub, "latchkey.dependency.nats") == SERVING
    await until(back, "the NATS dependency SERVING again", limit_s=5)
