"""The composition root of the permissions service: the only place adapters are chosen and built."""

from __future__ import annotations

from dataclasses import dataclass

from latchkey.permissions.v1 import permissions_pb2, permissions_pb2_grpc

from latchkit import authz, health, secret_hash
from latchkit.server import ServiceSpec
from services.permissions.adapters.outbox_relay import OutboxRelay
from services.permissions.adapters.postgres import Database
from services.permissions.directory import Directory
from services.permissions.entitlements import Entitlements
from services.permissions.grpc_api import PermissionsServicer
from services.permissions.settings import PermissionsSettings
from services.permissions.snapshot import AccessSnapshot


@dataclass
class PermissionsApp:
    settings: PermissionsSettings
    db: Database
    relay: OutboxRelay
    servicer: PermissionsServicer

    def spec(self) -> ServiceSpec:
        def register(server) -> list[str]:
            permissions_pb2_grpc.add_PermissionsServiceServicer_to_server(self.servicer, server)
            return [permissions_pb2.DESCRIPTOR.services_by_name["PermissionsService"].full_name]

        # In `process` mode the relay is not this loop's job: `__main__` runs it in a child process.
        background = [self.relay.run] if self.settings.relay_mode == "task" else []
        return ServiceSpec(name="permissions", register=register, on_stop=self.db.close,
                           policy=authz.allowed, background=background, startup=[self.db.warm],
                           dependencies=[health.postgresql(self.settings.postgres_dsn, required=True),
                                         health.nats(self.settings.bus, name="permissions")])


def build(settings: PermissionsSettings | None = None) -> PermissionsApp:
    """Build (not connect): connections open lazily when the server starts."""
    settings = settings or PermissionsSettings.from_env()
    db = Database(settings.postgres_dsn, settings.pool_size, max_group=settings.write_group_max,
                  queue_budget_s=settings.write_queue_budget_ms / 1000)
    relay = OutboxRelay(settings.postgres_dsn, settings.bus, batch=settings.relay_batch,
                        poll_seconds=settings.relay_poll_seconds)
    hmac_key = secret_hash.load_hmac_key()
    servicer = PermissionsServicer(Directory(db, hmac_key), Entitlements(db, hmac_key), AccessSnapshot(db))
    return PermissionsApp(settings, db, relay, servicer)
