"""What the projector's watchdog needs: the broker's view of a consumer, and a stall clock.

The watchdog asks the broker, not the pipeline: a pipeline parked forever (on a lock, in a
library call, in a fetch loop that stopped receiving after a reconnect) cannot be trusted
to report on itself, but the consumer's sequences show whether messages are delivered and
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

import nats

from latchkit import bus
from latchkit.bus import BusSettings

log = logging.getLogger("latchkey.access.projector")
STOP_SECONDS = 4.0
"""How long a cancelled pipeline may take to end (the server gives its background jobs 5 s)."""
_abandoned: set[asyncio.Task] = set()


class StallClock:
    """Stalled: the consumer has work (pending, or delivered and unacknowledged) and neither its
    delivered nor its acknowledged stream sequence has moved for `limit` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._seen: tuple[int, int] | None = None
        self._since = 0.0

    def observe(self, info, now: float) -> float | None:
        """How long it has been stuck, past the limit; None when it is not stalled.

        `info` None (no answer from the broker) gives no verdict and restarts the clock: a
        broker that cannot be asked is an outage, which the pipeline waits out on its own.
        """
        if info is None:
            self._seen = None
            return None
        position = (info.delivered.stream_seq or 0, info.ack_floor.stream_seq or 0)
        busy = (info.num_pending or 0) > 0 or (info.num_ack_pending or 0) > 0
        if position != self._seen or not busy:
            self._seen, self._since = position, now
            return None
        stuck = now - self._since
        return stuck if stuck >= self.limit else None


class BrokerProgress:
    """Reads one consumer's info over a connection of its own (made and re-made as needed)."""

    def __init__(self, settings: BusSettings, stream: str, consumer: str) -> None:
        self.settings = settings
        self.stream = stream
        self.consumer = consumer
        self._nc: nats.NATS | None = None
        self._connecting: asyncio.Task | None = None

    async def consumer_info(self, limit: float):
        """The consumer's info, or None when the broker did not answer (or has no such consumer)."""
        if self._nc is None:
            if self._connecting is None:
                # Its own task, never cancelled: nats-py keeps trying to connect while the
                # broker is away, and a cancel inside it can be lost (Python 3.11).
                self._connecting = asyncio.ensure_future(
                    bus.connect(self.settings, name="access-projector-watchdog"))
            done, _ = await asyncio.wait({self._connecting}, timeout=limit)
            if not done:
                return None
            connecting, self._connecting = self._connecting, None
            if connecting.cancelled() or connecting.exception() is not None:
                return None
            self._nc = connecting.result()
        try:
            return await self._nc.jetstream().consumer_info(self.stream, self.consumer, timeout=limit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no answer: no verdict
            log.debug("consumer info unavailable", extra={"error": repr(exc)})
            return None

    async def close(self) -> None:
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.add_done_callback(_close_when_connected)
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await bus.close(nc)


def _close_when_connected(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        closing = asyncio.ensure_future(bus.close(task.result()))
        _abandoned.add(closing)
        closing.add_done_callback(_abandoned.discard)


def stack_of(task: asyncio.Task) -> str:
    """Where `task` is suspended, outermost call first, down the chain of awaits.

    (`Task.print_stack` shows a single frame for a suspended coroutine: not where it waits.)
    """
    frames = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append(traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "".join(traceback.format_list(frames)) + f"  waiting for {awaited!r}\n"


async def end_task(task: asyncio.Task, logger: logging.Logger) -> None:
    """Cancel `task` and wait for it, at most STOP_SECONDS; one that does not end is left
    running (and said so): it must not keep its replacement, or a shutdown, waiting."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: reported by the caller already
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_SECONDS)
    if not done:
        logger.error("a cancelled projector pipeline did not end; leaving it", extra={"stack": stack_of(task)})
        _abandoned.add(task)
        task.add_done_callback(_abandoned.discard)
    elif not task.cancelled():
        task.exception()
