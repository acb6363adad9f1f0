"""The composition root of the audit service: picks the store, builds ingest and servicer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from latchkit import authz, health
from latchkit.server import ServiceSpec
from services.audit.grpc_api import AuditServicer, add_to_server
from services.audit.ingest import Ingest
from services.audit.ports import AuditStore
from services.audit.settings import AuditSettings

if TYPE_CHECKING:
    from services.audit.adapters.scylla_store import ScyllaAuditStore


def build_store(settings: AuditSettings) -> AuditStore:
    if settings.store_backend == "scylla":
        from services.audit.adapters.scylla_store import ScyllaAuditStore

        return ScyllaAuditStore(settings.scylla, settings.retention_days)
    from services.audit.adapters.sqlite_store import SqliteAuditStore

    return SqliteAuditStore(settings.data_dir / "audit.sqlite")


@dataclass
class AuditApp:
    settings: AuditSettings
    store: AuditStore
    ingest: Ingest

    def spec(self) -> ServiceSpec:
        def register(server) -> list[str]:
            return [add_to_server(AuditServicer(self.store, self.ingest), server)]

        def session() -> object:
            # Asked only with the scylla backend, whose store build_store made a ScyllaAuditStore.
            return cast("ScyllaAuditStore", self.store).session

        return ServiceSpec(name="audit", register=register, on_stop=self.store.close, policy=authz.allowed,
                           background=[self.ingest.run],
                           dependencies=[health.nats(self.settings.bus, name="audit"),
                                         *([health.cql("audit_store", session)]
                                           if self.settings.store_backend == "scylla" else [])])


def build(settings: AuditSettings | None = None) -> AuditApp:
    settings = settings or AuditSettings.from_env()
    store = build_store(settings)
    return AuditApp(settings, store, Ingest(store, settings.bus, batch=settings.ingest_batch))
