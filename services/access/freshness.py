"""Fail-closed doors: when did this access instance last show that its view had all of the stream?

A door with `max_view_staleness` N is opened only while the deciding process can
show that, at most N seconds ago, its view held everything the PERMISSIONS
stream held (`access_rules.rules.decide`, reason STALE_VIEW otherwise). The
proof comes from the broker, not from the pipeline: an empty fetch also times
out while the broker is away, but consumer info that says nothing is pending
and nothing is unacknowledged can only come from a live broker, and the
projector acknowledges a batch only once the view has it. So the time the
question was asked is a time at which the view had the whole stream.

The first process (the projector's) asks every 0.2 s and records the answer in
the view (`UnlockView.record_fresh`); the other processes read it from there
every 0.1 s. Unlock itself reads only a number in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from latchkit import bus
from latchkit.bus import PERMISSIONS_STREAM, BusSettings
from services.access.ports import UnlockView
from services.access.projector_watchdog import BrokerProgress

log = logging.getLogger("latchkey.access.freshness")
PROOF_PERIOD_SECONDS = 0.2
"""How often the projecting process asks the broker: well inside the shortest bound (1 s)."""
POLL_PERIOD_SECONDS = 0.1
"""How often another process reads the proof from the view."""


def caught_up(info) -> bool:
    """The broker's consumer info shows nothing left for the projector: no message waiting to be
    delivered, none delivered and not yet acknowledged."""
    return info is not None and not (info.num_pending or 0) and not (info.num_ack_pending or 0)


class FreshnessProver:
    """In the projecting process: asks the broker and records each proof, in memory and in the view."""

    def __init__(self, view: UnlockView, settings: BusSettings, durable: str,
                 period: float = PROOF_PERIOD_SECONDS) -> None:
        self.view = view
        self.settings = settings
        self.durable = durable
        self.period = period
        self.fresh_at: float | None = None

    def __call__(self) -> float | None:
        return self.fresh_at

    async def run(self) -> None:
        broker = BrokerProgress(self.settings, PERMISSIONS_STREAM, self.durable)
        unrecorded = False
        try:
            while True:
                bus.raise_if_cancelled()
                # Taken before asking: whatever the broker answers describes a later moment.
                asked = time.time()
                if caught_up(await broker.consumer_info(limit=max(self.period, 0.5))):
                    self.fresh_at = asked
                    try:
                        await self.view.record_fresh(asked)
                        unrecorded = False
                    except Exception as exc:  # the other processes keep their doors shut
                        if not unrecorded:
                            log.warning("cannot record the view's freshness; other processes' fail-closed "
                                        "doors stay shut", extra={"error": repr(exc)})
                        unrecorded = True
                await asyncio.sleep(self.period)  # the proof's period, not a synchronisation
        finally:
            await broker.close()


class PolledFreshness:
    """In the other processes: the projecting process's last proof, read from the view."""

    def __init__(self, read: Callable[[], Awaitable[float | None]], period: float = POLL_PERIOD_SECONDS) -> None:
        self.read = read
        self.period = period
        self.value: float | None = None

    def __call__(self) -> float | None:
        return self.value

    async def run(self) -> None:
        while True:
            bus.raise_if_cancelled()
            try:
                self.value = await self.read()
            except Exception as exc:  # the last proof only ages: doors close, not open
                log.debug("view freshness unreadable", extra={"error": repr(exc)})
            await asyncio.sleep(self.period)  # the polling period, not a synchronisation
