"""The outbox relay runs in a child of the permissions process: started again when it dies alone,
gone when its parent is killed, and its metrics on the parent's endpoint.

Each test runs `python -m services.permissions` (LATCHKEY_OUTBOX_RELAY at its default, `process`)
on a database of its own and on the test stack's NATS.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import urllib.request

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import free_port
from latchkit import envelope
from latchkit.bus import PERMISSIONS_STREAM, PERMISSIONS_SUBJECT_PREFIX, BusSettings, ensure_streams
from latchkit.settings import REPO_ROOT
from tests.e2e.helpers import rid
from tests.e2e.test_access_workers import alive, children
from tests.integration.conftest import aio_channel, fresh_database
from tests.waiting import until


class Permissions:
    """A permissions main process on free ports; `relay()` is its relay child's pid."""

    def __init__(self, stack, pki, state) -> None:
        urls = stack.urls()
        self.pki = pki
        self.port, self.metrics_port = free_port(), free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_")},
               "LATCHKEY_STATE_DIR": str(state), "LATCHKEY_CERTS_DIR": str(pki.dir),
               "LATCHKEY_POSTGRES_DSN": fresh_database(urls), "LATCHKEY_NATS_URL": urls.nats_url,
               "LATCHKEY_PERMISSIONS_PORT": str(self.port),
               "LATCHKEY_PERMISSIONS_METRICS_PORT": str(self.metrics_port), "LATCHKEY_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([sys.executable, "-m", "services.permissions"], env=env, cwd=REPO_ROOT)

    async def health(self, name: str = "") -> int | None:
        async with aio_channel(self.port, self.pki.tls("admin")) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=1)
            except grpc.aio.AioRpcError:
                return None
            return reply.status

    def relay(self) -> list[int]:
        return children(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        """The outbox samples of the parent's /metrics (https, client certificate, as Prometheus scrapes)."""
        admin = self.pki.tls("admin")
        context = ssl.create_default_context(cafile=str(admin.ca_file))
        context.load_cert_chain(str(admin.cert_file), str(admin.key_file))
        with urllib.request.urlopen(f"https://localhost:{self.metrics_port}/metrics", context=context,
                                    timeout=5) as reply:
            text = reply.read().decode()
        return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
                if s.name.startswith("latchkey_outbox_")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
async def permissions(stack, pki, tmp_path):
    service = Permissions(stack, pki, tmp_path)
    relay: list[int] = []
    try:
        # The process serves, with its relay child running.
        async def serving() -> bool:
            assert service.proc.poll() is None, "the permissions process exited"
            return await service.health() == health_pb2.HealthCheckResponse.SERVING and len(service.relay()) == 1

        await until(serving, "permissions SERVING with one relay child", 30)
        relay = service.relay()
        yield service
    finally:
        service.stop()
        for pid in {*relay, *service.relay()}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_killed_relay_is_started_again_and_publishes_the_next_grant(permissions, stack, pki):
    [first] = permissions.relay()
    url = stack.urls().nats_url
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        # The relay creates the streams once it leads; it may not have yet.
        await ensure_streams(js, BusSettings(url=url, duplicate_window_s=600.0))
        sub = await js.pull_subscribe(PERMISSIONS_SUBJECT_PREFIX + "access_changed", durable=None,
                                      stream=PERMISSIONS_STREAM,
                                      config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        # 1. The relay child is killed outright: nothing of its own runs.
        os.kill(first, signal.SIGKILL)
        # 2. A grant commits meanwhile (into the outbox: the request path never needed the relay).
        async with aio_channel(permissions.port, pki.tls("admin")) as channel:
            admin = permissions_pb2_grpc.PermissionsServiceStub(channel)
            user = (await admin.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(
                display_name="Ada")), timeout=10)).user
            door = (await admin.CreateDoor(pm.CreateDoorRequest(request_id=rid(), door=pm.Door(
                name="Lab", time_zone="Europe/Madrid")), timeout=10)).door
            granted = await admin.GrantAccess(pm.GrantAccessRequest(request_id=rid(), grant=pm.Grant(
                user_id=user.user_id, door_id=door.door_id)), timeout=10)
        # 3. Health says degraded, not down: the relay is missing, the service still serves.
        relay_health = "latchkey.dependency.outbox_relay"

        async def degraded() -> bool:
            return (await permissions.health(relay_health) == health_pb2.HealthCheckResponse.NOT_SERVING
                    and await permissions.health() == health_pb2.HealthCheckResponse.SERVING)

        await until(degraded, "the dead relay reported as a degraded dependency", 10)
        # 4. The parent starts another relay, which publishes the grant's access change.
        async def started_again() -> bool:
            return permissions.relay() not in ([], [first])

        await until(started_again, "a new relay child", 10)
        seen = None
        while seen is None:
            (msg,) = await sub.fetch(1, timeout=20)
            await msg.ack()
            event = envelope.parse(msg.data)
            pair = event.access_changed
            if (pair.door_id, pair.user_id) == (door.door_id, user.user_id):
                seen = event
        assert seen.revision == granted.revision
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == seen.event_id
        # 5. The relay's metrics show on the parent's endpoint: the new child leads and has published.
        samples = permissions.metrics()
        assert samples["latchkey_outbox_relay_leader"] == 1
        assert samples["latchkey_outbox_publish_lag_seconds_count"] >= 1
        # 6. Once the new relay has stayed up, health is whole again.
        async def whole() -> bool:
            return await permissions.health(relay_health) == health_pb2.HealthCheckResponse.SERVING

        await until(whole, "the relay reported up again", 15)
    finally:
        await nc.close()
    # 7. A graceful stop stops the relay too.
    [second] = permissions.relay()
    permissions.proc.send_signal(signal.SIGTERM)
    assert permissions.proc.wait(timeout=30) == 0
    await until(gone(second), "the relay gone after a graceful stop", 10)


async def test_the_relay_dies_with_its_killed_permissions_process(permissions):
    [relay] = permissions.relay()
    # The main process is killed (SIGKILL: no clean-up of its own runs).
    permissions.proc.kill()
    permissions.proc.wait(timeout=10)
    # Its relay follows within a bounded time: no orphan left publishing.
    await until(gone(relay), "the relay gone after its parent was killed", 10)


def gone(pid: int):
    """A predicate for `until`: the process has exited (a zombie counts as gone)."""

    async def predicate() -> bool:
        return not alive(pid)

    return predicate
