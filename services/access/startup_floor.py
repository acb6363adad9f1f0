"""The revision a freshly started access process must reach before it may answer from its view.

A process that was down while revokes were acknowledged restarts with a view
(and Redis, and caches) older than those revokes; until its projector has
applied them, answering from that state would open a door on a revoke the
promise says is honoured. So at start each process reads the newest revision
on the PERMISSIONS stream and treats it as a floor under every Unlock's
`min_revision`: below it, the answer waits like a min_revision (at most
LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS) and is DENIED with STALE_VIEW if
the view does not get there. Until the floor is known (the bus has not
answered since the process started) every Unlock is DENIED with STALE_VIEW at
once: on any doubt, deny. A process that keeps running through a bus outage
keeps its floor and answers from its last state, as documented.
"""

from __future__ import annotations

import asyncio
import logging

from latchkit import bus
from latchkit.bus import BusSettings
from latchkit.retry import Backoff

log = logging.getLogger("latchkey.access.startup_floor")

UNKNOWN = 2**62
"""Above any revision: every answer is stale until the floor is known."""


class StartupFloor:
    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self.revision = UNKNOWN

    @property
    def known(self) -> bool:
        return self.revision != UNKNOWN

    async def run(self) -> None:
        """Read the stream's newest revision once, retrying (with the shared backoff) until the bus answers."""
        backoff = Backoff()
        while True:
            try:
                nc = await bus.connect(self.settings, name="access-startup-floor", allow_reconnect=False)
                try:
                    self.revision = await bus.stream_tail_revision(nc.jetstream())
                finally:
                    await bus.close(nc)
                log.info("start-up floor known", extra={"revision": self.revision})
                return
            except Exception as exc:  # the bus may be down at start: deny until it answers
                wait = backoff.next()
                log.warning("cannot read the start-up floor; Unlock denies until it can",
                            extra={"error": repr(exc), "backoff": wait})
                await asyncio.sleep(wait)
