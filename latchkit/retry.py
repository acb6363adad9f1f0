"""One outage policy for every loop that must outlive its dependencies.

`retry_forever(name, attempt, progressed=...)` runs `attempt()` again after
every failure, waiting 0.1 s, 0.2 s, ... up to 1 s between failures. The cap
is what a component's return can cost: a longer wait, grown during an outage,
would leave the loop asleep for seconds after the dependency is back (the
revocation promise gives 2 s from its return; docs/architecture.md). The wait
goes back to 0.1 s as soon as the attempt *made progress* (it calls
`backoff.reset()`, typically after each successful round), not only when it
returns: a long-lived attempt such as "lead the relay" or "consume the stream"
never returns, and an outage after an hour of work must start again from the
shortest wait, or a short outage can stall the loop for the longest wait more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from latchkit import bus

INITIAL_SECONDS = 0.1
MAX_SECONDS = 1.0


class Backoff:
    """The wait before the next attempt; `reset()` after any success."""

    def __init__(self, initial: float = INITIAL_SECONDS, maximum: float = MAX_SECONDS) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def reset(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        """The wait to use now; the following one doubles (up to the maximum)."""
        wait = self.current
        self.current = min(self.current * 2, self.maximum)
        return wait

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


async def retry_forever(name: str, attempt: Callable[[Backoff], Awaitable[None]], log: logging.Logger,
                        backoff: Backoff | None = None) -> None:
    """Run `attempt(backoff)` forever; log and wait after each failure. Cancellation ends the loop.

    `attempt` calls `backoff.reset()` whenever it makes progress. An attempt that
    returns normally is simply started again (after resetting the wait).
    """
    backoff = backoff or Backoff()
    while True:
        try:
            bus.raise_if_cancelled()
            await attempt(backoff)
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive any single failure
            wait = backoff.next()
            log.warning("%s failed; retrying", name, extra={"error": repr(exc), "backoff": wait})
            await asyncio.sleep(wait)
