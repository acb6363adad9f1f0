"""The gRPC server runner every service uses.

grpc.aio on uvloop, mTLS only, standard health and reflection (v1 and v1alpha) services, one
interceptor for identity/authorization/metrics, and a graceful shutdown on
SIGTERM/SIGINT: health turns NOT_SERVING, in-flight calls get the grace
period, then the service's own resources close.

Health tells the truth (latchkit/health.py): each declared dependency is probed in the
background and reported as `latchkey.dependency.<name>`; `""` and the service's names say
SERVING only while every required dependency answers and `healthy()` holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from latchkit import bus, reflection, tracing
from latchkit.health import DependencyCheck
from latchkit.interceptor import Policy, ServerInterceptor, allow_any_principal
from latchkit.metrics import serve_metrics
from latchkit.settings import ServerSettings
from latchkit.tls import server_credentials

log = logging.getLogger("latchkit.server")
HEALTH_POLL_SECONDS = 0.25


def server_options(settings: ServerSettings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        # A second server on the same port silently steals traffic unless this
        # is off; only the access service's worker processes turn it on.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Refuse ping floods: a client may ping at most every 10 s, and is
        # disconnected after two offences.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


@dataclass
class ServiceSpec:
    """What a service contributes to the runner."""

    name: str
    register: Callable[[grpc.aio.Server], Sequence[str]]
    """Adds servicers to the server; returns their full service names."""
    on_stop: Callable[[], Coroutine[Any, Any, None]] | None = None
    policy: Policy = allow_any_principal
    reuse_port: bool = False
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    """Jobs that run as long as the server; one that ends before the shutdown is logged as an error."""
    startup: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    """One-shot jobs started with the server (a pool warm-up, the access start-up floor): their
    normal end is expected; a failure or a leaked cancel is logged as an error."""
    healthy: Callable[[], bool] | None = None
    """Polled every HEALTH_POLL_SECONDS: while it returns False, health says NOT_SERVING (e.g. the
    access service's projector is stalled and its view falls behind)."""
    dependencies: list[DependencyCheck] = field(default_factory=list)
    """Probed in the background; each is reported by name, and a required one that is down
    makes the service NOT_SERVING (latchkit/health.py)."""


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    metrics_server: Any = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    dependencies: list[DependencyCheck] = field(default_factory=list)
    stopping: bool = False

    def watch(self, task: asyncio.Task, *, one_shot: bool = False) -> asyncio.Task:
        """Keep `task` as a background job: it is stopped with the server, and if it ends
        before that (an error, or a cancel leaked from a library) it is logged, never silent.
        A `one_shot` job may end normally."""
        self.tasks.append(task)
        task.add_done_callback(lambda t: self._ended(t, one_shot))
        return task

    def _ended(self, task: asyncio.Task, one_shot: bool) -> None:
        if self.stopping:
            return
        if task.cancelled():
            log.error("a background task was cancelled while the server runs", extra={"task": task.get_name()})
        elif task.exception() is not None:
            log.error("a background task failed while the server runs", extra={"task": task.get_name()},
                      exc_info=task.exception())
        elif not one_shot:
            log.error("a background task ended while the server runs", extra={"task": task.get_name()})

    async def stop(self, grace: float) -> None:
        self.stopping = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            # Bounded: a background job stuck in a library must not keep the shutdown
            # (and what runs after it, e.g. spooling the access service's decisions) waiting.
            finished, stuck = await asyncio.wait(self.tasks, timeout=5)
            for task in finished:
                if not task.cancelled():
                    task.exception()  # retrieved: it ended as it was stopped, nothing to report
            for task in stuck:
                log.warning("a background task did not stop within 5 s", extra={"task": task.get_name()})
        for dependency in self.dependencies:
            await dependency.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


async def start(settings: ServerSettings, spec: ServiceSpec) -> RunningServer:
    """Start listening; returns once the port is bound and health says SERVING."""
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(spec.policy)],
        options=server_options(settings, reuse_port=spec.reuse_port),
        # Past this many calls in flight new ones get RESOURCE_EXHAUSTED at
        # once instead of queueing without bound.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    names = tuple(spec.register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server, (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    port = server.add_secure_port(f"{settings.host}:{settings.port}", server_credentials(settings.tls))
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    # The first round of probes (each bounded) decides the first answer: a service whose
    # database is down at start-up never claims to be SERVING.
    await asyncio.gather(*(dependency.check_once() for dependency in spec.dependencies))
    published: dict[str, bool] = {}
    await _publish(health_servicer, ("", *names), spec, published)
    metrics = serve_metrics(settings.host, settings.metrics_port, settings.tls)
    running = RunningServer(server, port, health_servicer, names, metrics, dependencies=list(spec.dependencies))
    for job in spec.background:
        running.watch(asyncio.create_task(job(), name=f"{spec.name}-bg-{getattr(job, '__name__', 'job')}"))
    for job in spec.startup:
        running.watch(asyncio.create_task(job(), name=f"{spec.name}-start-{getattr(job, '__name__', 'job')}"),
                      one_shot=True)
    for dependency in spec.dependencies:
        running.watch(asyncio.create_task(dependency.run(), name=f"{spec.name}-health-{dependency.name}"))
    if spec.healthy is not None or spec.dependencies:
        running.watch(asyncio.create_task(_follow_health(health_servicer, ("", *names), spec, published),
                                          name=f"{spec.name}-health"))
    log.info("serving", extra={"service": spec.name, "port": port, "services": list(names)})
    return running


def _ready(spec: ServiceSpec) -> bool:
    return not any(d.blocking for d in spec.dependencies) and (spec.healthy is None or spec.healthy())


async def _publish(servicer: health.aio.HealthServicer, names: Sequence[str], spec: ServiceSpec,
                   published: dict[str, bool]) -> None:
    """Set every status that changed since the last call (`published` remembers them)."""
    ready = _ready(spec)
    wanted = {name: ready for name in names} | {d.service_name: d.up for d in spec.dependencies}
    if published and published.get("") != ready:
        log.warning("health changes", extra={"serving": ready,
                                             "down": [d.name for d in spec.dependencies if not d.up]})
    for name, up in wanted.items():
        if published.get(name) != up:
            published[name] = up
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await servicer.set(name, status)


async def _follow_health(servicer: health.aio.HealthServicer, names: Sequence[str], spec: ServiceSpec,
                         published: dict[str, bool]) -> None:
    """Health follows the dependency probes and `healthy()`. (After `enter_graceful_shutdown` the
    servicer ignores `set`, so this cannot bring a stopping server back to SERVING.)"""
    while True:
        await asyncio.sleep(HEALTH_POLL_SECONDS)  # the polling period, not a synchronisation
        await _publish(servicer, names, spec, published)


async def serve_forever(settings: ServerSettings, spec: ServiceSpec) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully.

    A service process starts here, so here its tracing is configured (on only with an OTLP
    endpoint in the environment; each access worker process configures its own) and flushed.
    """
    tracing.configure(spec.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(settings, spec)
    try:
        await stop.wait()
    finally:
        bus.shutting_down()
        log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
        await running.stop(settings.grace_seconds)
        try:
            if spec.on_stop is not None:
                await spec.on_stop()
        finally:
            tracing.shutdown()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop."""
    import uvloop

    uvloop.run(main())
