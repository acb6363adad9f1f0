"""Health that tells the truth: each service's readiness follows the dependencies it needs.

A service declares its dependencies as `DependencyCheck`s. Each one is probed in a
background task of its own (never on an RPC's path), each probe bounded by
`PROBE_TIMEOUT_SECONDS`; the server publishes the result in the standard
grpc.health.v1 servicer:

- `latchkey.dependency.<name>` (e.g. `latchkey.dependency.postgresql`): SERVING while the
  dependency answers, NOT_SERVING while it does not;
- `""` and the service's own names: NOT_SERVING while a *required* dependency is down (the
  service cannot do its main job), unless its `fallback` answers. A dependency that is not
  required only degrades the service: it stays SERVING and the dependency's own name says
  what is missing.

A probe keeps one connection of its own (the service's pools and consumers are left alone)
and throws it away when it fails; while a dependency is down the probes back off to one a
second at most (latchkit/retry.py), so a dead server is not hammered and a returning one is
seen within about a second: health comes back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from latchkit import bus
from latchkit.retry import Backoff

log = logging.getLogger("latchkit.health")

DEPENDENCY_PREFIX = "latchkey.dependency."
DEPENDENCIES = ("postgresql", "redis", "nats", "view", "audit_store", "outbox_relay")
"""Every dependency name a service may report (what `latchkey health` asks each service for)."""
PROBE_TIMEOUT_SECONDS = 1.0
UP_PERIOD_SECONDS = 1.0


async def _nothing() -> None:
    return None


@dataclass
class DependencyCheck:
    name: str
    """One of DEPENDENCIES; reported as `latchkey.dependency.<name>`."""
    probe: Callable[[], Awaitable[None]]
    """Returns when the dependency answers; raises (or is cancelled by the timeout) when it does not."""
    required: bool
    """Down means the service cannot do its main job: NOT_SERVING. Otherwise: degraded, still SERVING."""
    close: Callable[[], Awaitable[None]] = _nothing
    fallback: DependencyCheck | None = None
    """A required dependency whose down is tolerated while this one answers (access: the view,
    while Redis still answers what it holds)."""
    up: bool = field(default=True, init=False)

    @property
    def blocking(self) -> bool:
        """Down, required, and nothing to fall back on: the service cannot do its main job."""
        return self.required and not self.up and not (self.fallback is not None and self.fallback.up)

    @property
    def service_name(self) -> str:
        return DEPENDENCY_PREFIX + self.name

    async def check_once(self) -> bool:
        try:
            await asyncio.wait_for(self.probe(), PROBE_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means "does not answer"
            if self.up:
                log.warning("dependency down", extra={"dependency": self.name, "required": self.required,
                                                      "error": repr(exc)})
            self.up = False
            return False
        if not self.up:
            log.info("dependency back", extra={"dependency": self.name})
        self.up = True
        return True

    async def run(self) -> None:
        """Probe for ever: every second while up; sooner after a failure, backing off to a second."""
        backoff = Backoff(initial=0.25, maximum=UP_PERIOD_SECONDS)
        while True:
            if await self.check_once():
                backoff.reset()
                await asyncio.sleep(UP_PERIOD_SECONDS)  # the probing period, not a synchronisation
            else:
                await backoff.sleep()


def postgresql(dsn: str, *, required: bool) -> DependencyCheck:
    """`SELECT 1` on a connection of the check's own (the service's pool is left to its requests)."""
    import psycopg

    held: list[psycopg.AsyncConnection] = []

    async def drop() -> None:
        while held:
            conn = held.pop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), PROBE_TIMEOUT_SECONDS)

    async def probe() -> None:
        try:
            if not held or held[0].closed:
                await drop()
                held.append(await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=2))
            await held[0].execute("SELECT 1")
        except BaseException:
            await drop()
            raise

    return DependencyCheck("postgresql", probe, required, drop)


def nats(settings: bus.BusSettings, *, name: str, required: bool = False) -> DependencyCheck:
    """A PING/PONG round trip (`flush`) on a connection of the check's own, without reconnects:
    a lost connection is dropped and the next probe dials again."""
    import nats as nats_client

    held: list = []

    async def quiet(*_args) -> None:
        return None

    async def drop() -> None:
        while held:
            await bus.close(held.pop(), limit_s=PROBE_TIMEOUT_SECONDS)

    async def probe() -> None:
        try:
            if not held or not held[0].is_connected:
                await drop()
                held.append(await nats_client.connect(settings.url, name=f"{name}-health", allow_reconnect=False,
                                                      connect_timeout=PROBE_TIMEOUT_SECONDS, error_cb=quiet,
                                                      disconnected_cb=quiet, closed_cb=quiet))
            await held[0].flush(timeout=PROBE_TIMEOUT_SECONDS)
        except BaseException:
            await drop()
            raise

    return DependencyCheck("nats", probe, required, drop)


def redis(client, *, required: bool = False) -> DependencyCheck:
    """PING through the service's own client (its sockets time out in a fraction of a second)."""

    async def probe() -> None:
        await client.ping()

    return DependencyCheck("redis", probe, required)


def cql(name: str, session: Callable[[], object], *, required: bool = True,
        fallback: DependencyCheck | None = None) -> DependencyCheck:
    """One read of `system.local` through the adapter's session (None until it is open: down)."""
    from latchkit import scylla

    async def probe() -> None:
        current = session()
        if current is None:
            raise ConnectionError("no CQL session")
        await scylla.execute(current, "SELECT release_version FROM system.local")

    return DependencyCheck(name, probe, required, fallback=fallback)
