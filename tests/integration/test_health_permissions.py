"""Permissions health tells the truth: NOT_SERVING while its PostgreSQL is down (it can neither
write nor read), SERVING but degraded while NATS is down (writes go on into the outbox), and
SERVING again by itself as soon as the component returns."""

from __future__ import annotations

import asyncio
import io
import shutil
import uuid

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from devstack.stack import Stack, StackPorts
from latchkit import server
from latchkit.bus import BusSettings
from latchkit.settings import REPO_ROOT
from ops import cli_errors
from ops.run import check_health
from services.permissions import bootstrap
from services.permissions.settings import PermissionsSettings
from tests.integration.conftest import aio_channel, fresh_database, server_settings
from tests.waiting import until

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "latchkey.permissions.v1.PermissionsService"


@pytest.fixture
async def own_stack():
    """PostgreSQL and NATS of this test's own (the session's are shared by every test and must keep
    running); PostgreSQL runs as the postgres user, so the directory is under .state."""
    stack = Stack(REPO_ROOT / ".state" / f"test-health-{uuid.uuid4().hex[:8]}", StackPorts.free())
    stack.state_dir.mkdir(parents=True)
    try:
        await asyncio.to_thread(stack.start_component, "postgres")
        await asyncio.to_thread(stack.start_component, "nats")
        yield stack
    finally:
        await asyncio.to_thread(stack.stop_component, "nats")
        await asyncio.to_thread(stack.stop_component, "postgres")
        shutil.rmtree(stack.state_dir, ignore_errors=True)


@pytest.fixture
async def health(own_stack, pki, monkeypatch):
    """A permissions server (relay included) on the private stack; yields a function that reads
    the health of a name."""
    urls = own_stack.urls()
    settings = PermissionsSettings(server=server_settings(pki.tls("permissions")),
                                   bus=BusSettings(url=urls.nats_url, duplicate_window_s=600.0),
                                   postgres_dsn=fresh_database(urls), pool_size=4, relay_poll_seconds=0.2,
                                   relay_batch=256)
    app = bootstrap.build(settings)
    running = await server.start(settings.server, app.spec())
    # What `latchkey health` dials: this server, as admin.
    monkeypatch.setenv("LATCHKEY_PERMISSIONS_TARGET", f"localhost:{running.port}")
    admin = pki.tls("admin")
    for key, path in {"CA": admin.ca_file, "CERT": admin.cert_file, "KEY": admin.key_file}.items():
        monkeypatch.setenv(f"LATCHKEY_CLIENT_TLS_{key}", str(path))
    try:
        async with aio_channel(running.port, pki.tls("admin")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(name: str) -> int:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status

            yield status
    finally:
        await running.stop(0.5)
        await app.db.close()


async def latchkey_health(**options) -> tuple[int, str]:
    """`latchkey health --only permissions`: its exit code and what it printed."""
    out = io.StringIO()
    code = await asyncio.to_thread(check_health, Console(file=out, width=200), only="permissions", **options)
    return code, out.getvalue()


async def statuses(status) -> dict[str, int]:
    names = ("", SERVICE, "latchkey.dependency.postgresql", "latchkey.dependency.nats")
    return {name: await status(name) for name in names}


async def test_permissions_is_not_serving_while_postgresql_is_down_and_recovers_by_itself(own_stack, health):
    # With everything up, the service and both dependencies are SERVING.
    assert set((await statuses(health)).values()) == {SERVING}

    # PostgreSQL stops: the service, its name and the dependency all say NOT_SERVING; NATS stays up.
    await asyncio.to_thread(own_stack.stop_component, "postgres")

    async def down() -> bool:
        return await health("") == NOT_SERVING
    await until(down, "permissions NOT_SERVING with PostgreSQL down", limit_s=10)
    assert await statuses(health) == {"": NOT_SERVING, SERVICE: NOT_SERVING,
                                      "latchkey.dependency.postgresql": NOT_SERVING,
                                      "latchkey.dependency.nats": SERVING}
    # `latchkey health` names the dependency and fails the check (exit 1); the liveness probe
    # still passes: the server answers, and a restart would not bring PostgreSQL back.
    code, printed = await latchkey_health()
    assert code == cli_errors.CHECK_FAILED and "NOT_SERVING  down: postgresql" in printed
    assert (await latchkey_health(liveness=True))[0] == cli_errors.OK

    # PostgreSQL returns: health comes back by itself within a few seconds.
    await asyncio.to_thread(own_stack.start_component, "postgres")

    async def back() -> bool:
        return set((await statuses(health)).values()) == {SERVING}
    await until(back, "permissions SERVING again after PostgreSQL returns", limit_s=5)


async def test_permissions_stays_serving_degraded_while_nats_is_down_and_recovers_by_itself(own_stack, health):
    # NATS stops: writes still go into the outbox, so the service stays SERVING; the
    # dependency says NATS is down.
    await asyncio.to_thread(own_stack.stop_component, "nats")

    async def nats_down() -> bool:
        return await health("latchkey.dependency.nats") == NOT_SERVING
    await until(nats_down, "the NATS dependency NOT_SERVING", limit_s=10)
    assert await statuses(health) == {"": SERVING, SERVICE: SERVING,
                                      "latchkey.dependency.postgresql": SERVING,
                                      "latchkey.dependency.nats": NOT_SERVING}
    # `latchkey health` passes (exit 0) and says the service is degraded, and by what.
    code, printed = await latchkey_health()
    assert code == cli_errors.OK and "SERVING  degraded: nats" in printed

    # NATS returns: the dependency is SERVING again by itself.
    await asyncio.to_thread(own_stack.start_component, "nats")

    async def back() -> bool:
        return set((await statuses(health)).values()) == {SERVING}
    await until(back, "the NATS dependency SERVING again", limit_s=5)
