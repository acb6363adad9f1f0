"""Access health tells the truth: Unlock answers from the embedded view, so Redis hung or NATS
down only degrade the service (SERVING, the dependency NOT_SERVING), and each dependency is
SERVING again by itself as soon as the component answers again. A CQL view that is down is
covered by Redis while Redis answers; with both out, access is NOT_SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import Stack, StackPorts, free_port
from latchkit import server
from services.access import bootstrap
from services.access.settings import AccessSettings
from tests.integration.conftest import aio_channel, server_settings
from tests.waiting import until

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = ("", "latchkey.access.v1.AccessService", "latchkey.dependency.redis", "latchkey.dependency.nats")


@pytest.fixture
async def own_stack(stack):
    """Redis and NATS of this test's own, under the test stack's state directory: stopping them stops no one else."""
    own = Stack(stack.state_dir / f"health-access-{uuid.uuid4().hex[:6]}", StackPorts.free())
    await asyncio.to_thread(own.start_component, "redis")
    await asyncio.to_thread(own.start_component, "nats")
    yield own
    own.thaw_component("redis")
    await asyncio.to_thread(own.stop_component, "nats")
    await asyncio.to_thread(own.stop_component, "redis")


@pytest.fixture
async def health(own_stack, pki, tmp_path, monkeypatch):
    """An access server (projector included, one worker, embedded view) on the private stack;
    yields a function that reads the status of every name this test looks at."""
    async with access_server(own_stack, pki, tmp_path, monkeypatch, NAMES) as statuses:
        yield statuses


@contextlib.asynccontextmanager
async def access_server(own_stack, pki, tmp_path, monkeypatch, names, *, open_view: bool = True):
    urls = own_stack.urls()
    for name, value in {"LATCHKEY_REDIS_URL": urls.redis_url, "LATCHKEY_NATS_URL": urls.nats_url,
                        "LATCHKEY_STATE_DIR": str(tmp_path), "LATCHKEY_ACCESS_WORKERS": "1",
                        "LATCHKEY_ACCESS_INSTANCE": f"health-{uuid.uuid4().hex[:6]}"}.items():
        monkeypatch.setenv(name, value)
    settings = dataclasses.replace(AccessSettings.from_env(), server=server_settings(pki.tls("access")))
    app = bootstrap.build(settings)
    if open_view:
        await app.start()
    else:
        app.decisions.spool.open()
    running = await server.start(settings.server, app.spec())
    try:
        async with aio_channel(running.port, pki.tls("admin")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def statuses() -> dict[str, int]:
                return {name: (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
                        for name in names}

            yield statuses
    finally:
        await running.stop(0.5)
        await app.stop()


def expect(*, redis: int = SERVING, nats: int = SERVING) -> dict[str, int]:
    return dict(zip(NAMES, (SERVING, SERVING, redis, nats), strict=True))


async def test_access_stays_serving_degraded_while_redis_hangs_and_recovers_by_itself(own_stack, health):
    # With everything up, the service and its dependencies are SERVING.
    assert await health() == expect()

    # Redis hangs (SIGSTOP: connections stay open, nothing answers): Unlock answers from the
    # view, so access stays SERVING; the Redis dependency says NOT_SERVING.
    own_stack.freeze_component("redis")

    async def degraded() -> bool:
        return await health() == expect(redis=NOT_SERVING)
    await until(degraded, "access SERVING with the Redis dependency NOT_SERVING", limit_s=10)

    # Redis answers again: everything is SERVING by itself.
    own_stack.thaw_component("redis")

    async def back() -> bool:
        return await health() == expect()
    await until(back, "the Redis dependency SERVING again", limit_s=5)


async def test_access_stays_serving_degraded_while_nats_is_down_and_recovers_by_itself(own_stack, health):
    # NATS stops: decisions wait in the spool and the view answers, so access stays SERVING.
    await asyncio.to_thread(own_stack.stop_component, "nats")

    async def degraded() -> bool:
        return await health() == expect(nats=NOT_SERVING)
    await until(degraded, "access SERVING with the NATS dependency NOT_SERVING", limit_s=10)

    # NATS returns: everything is SERVING by itself.
    await asyncio.to_thread(own_stack.start_component, "nats")

    async def back() -> bool:
        return await health() == expect()
    await until(back, "the NATS dependency SERVING again", limit_s=5)


async def test_access_with_its_cql_view_down_serves_while_redis_answers_and_not_when_both_are_out(
        own_stack, pki, tmp_path, monkeypatch):
    # A CQL view that nothing serves (no engine on that port): the view dependency is down.
    monkeypatch.setenv("LATCHKEY_VIEW_BACKEND", "scylla")
    monkeypatch.setenv("LATCHKEY_SCYLLA_HOSTS", "127.0.0.1")
    monkeypatch.setenv("LATCHKEY_SCYLLA_PORT", str(free_port()))
    names = ("", "latchkey.dependency.view", "latchkey.dependency.redis")
    async with access_server(own_stack, pki, tmp_path, monkeypatch, names, open_view=False) as health:
        # Redis still answers what it holds: access is SERVING, degraded (the view NOT_SERVING).
        assert await health() == dict(zip(names, (SERVING, NOT_SERVING, SERVING), strict=True))

        # Redis hangs as well: Unlock can only deny; access is NOT_SERVING.
        own_stack.freeze_component("redis")

        async def out() -> bool:
            return await health() == dict(zip(names, (NOT_SERVING, NOT_SERVING, NOT_SERVING), strict=True))
        await until(out, "access NOT_SERVING with both its view and Redis out", limit_s=10)

        # Redis answers again: access is SERVING again by itself.
        own_stack.thaw_component("redis")

        async def back() -> bool:
            return await health() == dict(zip(names, (SERVING, NOT_SERVING, SERVING), strict=True))
        await until(back, "access SERVING again once Redis answers", limit_s=5)
