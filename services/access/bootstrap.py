"""The composition root of the access service: picks the view, builds Redis, projector, spool."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from latchkey.access.v1 import access_pb2, access_pb2_grpc

from latchkit import authz, health, secret_hash
from latchkit.server import ServiceSpec
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.freshness import FreshnessProver, PolledFreshness
from services.access.grpc_api import AccessServicer
from services.access.local_cache import LocalCache, PolledWatermark
from services.access.ports import UnlockView
from services.access.projector import Projector
from services.access.service import UnlockService
from services.access.settings import AccessSettings
from services.access.startup_floor import StartupFloor

if TYPE_CHECKING:
    from services.access.adapters.scylla_view import ScyllaUnlockView


def build_view(settings: AccessSettings) -> UnlockView:
    if settings.view_backend == "scylla":
        from services.access.adapters.scylla_view import ScyllaUnlockView

        return ScyllaUnlockView(settings.scylla, settings.instance)
    from services.access.adapters.sqlite_view import SqliteUnlockView

    return SqliteUnlockView(settings.data_dir / "view.sqlite")


@dataclass
class AccessApp:
    settings: AccessSettings
    view: UnlockView
    cache: RedisUnlockCache
    decisions: DecisionPublisher
    projector: Projector | None
    service: UnlockService
    local: LocalCache | None = None
    polled_watermark: PolledWatermark | None = None
    freshness: FreshnessProver | PolledFreshness | None = None

    def spec(self) -> ServiceSpec:
        def register(server) -> list[str]:
            access_pb2_grpc.add_AccessServiceServicer_to_server(
                AccessServicer(self.service, self.settings.max_deadline_seconds), server)
            return [access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name]

        background = [self.decisions.run_spiller, self.decisions.run_publisher]
        if self.projector is not None:
            background += [self.projector.run, self.projector.run_redis_lease]
        if self.polled_watermark is not None:
            background.append(self.polled_watermark.run)
        if self.freshness is not None:
            background.append(self.freshness.run)
        if self.local is not None:
            background.append(self.local.run)
        floor = self.service.startup_floor

        def view_session() -> object:
            # Asked only with the scylla backend, whose view build_view made a ScyllaUnlockView.
            return cast("ScyllaUnlockView", self.view).session

        return ServiceSpec(name="access", register=register, on_stop=self.stop, policy=authz.allowed,
                           reuse_port=self.settings.workers > 1, background=background,
                           startup=[floor.run] if floor is not None else [],
                           healthy=self.projector.healthy if self.projector is not None else None,
                           dependencies=[(redis := health.redis(self.cache.client)),
                                         health.nats(self.settings.bus, name="access"),
                                         *([health.cql("view", view_session, fallback=redis)]
                                           if self.settings.view_backend == "scylla" else [])])

    async def start(self) -> None:
        self.decisions.spool.open()  # fails at once if another process holds this spool
        await self.view.open()

    async def stop(self) -> None:
        await self.decisions.close()
        if self.projector is not None:
            await self.projector.backlog.close()
        await self.cache.close()
        await self.view.close()


def build(settings: AccessSettings | None = None) -> AccessApp:
    settings = settings or AccessSettings.from_env()
    if settings.worker_index > 0:
        # The workers share the gRPC port, not the metrics port: the first worker serves metrics.
        settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, metrics_port=0))
    view = build_view(settings)
    cache = RedisUnlockCache(settings.redis_url, settings.cache_ttl_seconds, settings.negative_ttl_seconds,
                             instance=settings.instance)
    spool = SqliteDecisionSpool(settings.data_dir / f"decisions-{settings.worker_index}.sqlite")
    decisions = DecisionPublisher(spool, settings.bus, durability=settings.decision_durability,
                                  linger=settings.decision_linger_seconds)
    # One logical projector: only worker 0 runs it.
    projector = (Projector(view, cache, settings.bus, SqliteRedisBacklog(settings.data_dir / "redis-backlog.sqlite"),
                           instance=settings.instance, lease_seconds=settings.redis_lease_seconds,
                           stall_seconds=settings.projector_stall_seconds)
                 if settings.worker_index == 0 else None)
    local = polled = None
    if settings.local_cache_entries:
        if projector is not None:
            def watermark() -> int:
                return projector.watermark
        else:
            watermark = polled = PolledWatermark(view.watermark)
        local = LocalCache(settings.bus, capacity=settings.local_cache_entries, ttl=settings.cache_ttl_seconds,
                           negative_ttl=settings.negative_ttl_seconds, view_watermark=watermark)
    # Fail-closed doors: the projecting process proves its view fresh; the others read the proof.
    freshness = (FreshnessProver(view, settings.bus, projector.durable) if projector is not None
                 else PolledFreshness(view.fresh_at))
    service = UnlockService(
        view, cache, decisions, secret_hash.load_hmac_key(), projector=projector,
        min_revision_wait=settings.min_revision_wait_seconds,
        credential_throttle=DenialThrottle(settings.throttle_window_seconds, settings.throttle_credential_denials),
        door_throttle=DenialThrottle(settings.throttle_window_seconds, settings.throttle_door_denials),
        local=local, startup_floor=StartupFloor(settings.bus), view_fresh_at=freshness,
    )
    return AccessApp(settings, view, cache, decisions, projector, service, local, polled, freshness)
