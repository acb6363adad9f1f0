"""In-process services on port 0 over the test stack, each test module on a fresh database."""

from __future__ import annotations

import dataclasses
import uuid

import grpc
import psycopg
import pytest
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit import server, tracing
from latchkit.bus import BusSettings
from latchkit.settings import ServerSettings, TlsSettings
from services.permissions import bootstrap as permissions_bootstrap
from services.permissions import migrations
from services.permissions.settings import PermissionsSettings
from tests.otlp_collector import Collector


def fresh_database(urls) -> str:
    """A new database on the test server with the permissions schema; returns its DSN."""
    name = f"lk_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(urls.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = urls.postgres_dsn.rsplit("/", 1)[0] + "/" + name
    migrations.upgrade({"LATCHKEY_POSTGRES_DSN": dsn})
    return dsn


def server_settings(tls: TlsSettings) -> ServerSettings:
    return ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5,
                          max_message_bytes=64 * 1024, tls=tls)


def aio_channel(port: int, tls: TlsSettings) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(tls.ca_file.read_bytes(), tls.key_file.read_bytes(),
                                         tls.cert_file.read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


@dataclasses.dataclass
class RunningPermissions:
    app: permissions_bootstrap.PermissionsApp
    port: int
    dsn: str


async def start_permissions(urls, pki, *, relay: bool = True, dsn: str | None = None, **overrides) -> tuple:
    """`overrides`: other `PermissionsSettings` fields (e.g. write_queue_budget_ms)."""
    dsn = dsn or fresh_database(urls)
    settings = PermissionsSettings(server=server_settings(pki.tls("permissions")),
                                   bus=BusSettings(url=urls.nats_url, duplicate_window_s=600.0),
                                   postgres_dsn=dsn, pool_size=20, relay_poll_seconds=0.2, relay_batch=256,
                                   **overrides)
    app = permissions_bootstrap.build(settings)
    spec = app.spec()
    if not relay:
        spec.background = []
    running = await server.start(settings.server, spec)
    return RunningPermissions(app, running.port, dsn), running


@pytest.fixture(scope="module")
async def permissions(urls, pki):
    """A permissions server with its relay, on its own database."""
    service, running = await start_permissions(urls, pki)
    yield service
    await running.stop(0.5)
    await service.app.db.close()


@pytest.fixture
async def admin(permissions, pki):
    async with aio_channel(permissions.port, pki.tls("admin")) as ch:
        yield permissions_pb2_grpc.PermissionsServiceStub(ch)


@pytest.fixture
def tracing_service() -> str:
    """The service name the `collector` fixture configures tracing as (a test module may override it)."""
    return "probe"


@pytest.fixture
async def collector(tracing_service):
    """A real OTLP receiver, with this process's tracing exporting to it for the test."""
    received = Collector()
    await received.start()
    tracing.configure(tracing_service, {"OTEL_EXPORTER_OTLP_ENDPOINT": received.endpoint})
    yield received
    tracing.shutdown()
    await received.stop()


@pytest.fixture
def tracing_off(tracing_service):
    """This process's tracing switched off for the test (as with no OTLP endpoint)."""
    tracing.configure(tracing_service, {})
    assert tracing.ENABLED is False
    yield
    tracing.shutdown()


@pytest.fixture
async def scratch_stream(urls):
    """(jetstream, name): a JetStream stream of the test's own, deleted after it."""
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(urls.nats_url)
    js = nc.jetstream()
    name = f"TRACING_{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    yield js, name
    await js.delete_stream(name)
    await nc.close()


@pytest.fixture
async def own_permissions(urls, pki):
    """A permissions server (no relay) on a database of its own: what it holds is only the test's."""
    permissions, running = await start_permissions(urls, pki, relay=False)
    yield permissions
    await running.stop(0.5)
    await permissions.app.db.close()


@pytest.fixture
async def own_admin(own_permissions, pki):
    async with aio_channel(own_permissions.port, pki.tls("admin")) as ch:
        yield permissions_pb2_grpc.PermissionsServiceStub(ch)
