"""The per-process cache in front of Redis: an Unlock hit costs no I/O at all.

Each access process keeps the entries it has read (pairs and credentials,
including "nothing there") and applies every permissions event to them itself,
from an ordered JetStream consumer of its own (the "feed"). The rules that
keep it from ever answering from something older than Redis would:

- Events always win by version, exactly like Redis' set-if-newer: an event is
  stored even for a key nobody has read yet, so a fill racing it cannot bring
  back what it replaced.
- The feed starts after the stream's last message at connect time; that
  message's revision is the `floor` (if it was purged, the first event
  the feed sees sets it). A fill (an entry read from Redis or the
  view) is kept only if the view's watermark, read before the fill's own read,
  had reached the floor: then the fill already holds every event the feed will
  not see. Clearing the cache (it is full, or the feed restarts) raises the
  floor to the highest revision the feed has seen, for the same reason.
- The cache answers only while the feed is connected and has applied at
  least everything the view has (`watermark >= view watermark`), and the view
  has reached the floor. A miss is then answered from Redis or the view with
  whatever the cache holds taking precedence, at the cache's revision: any key
  the cache does not hold has not changed since the floor. A feed that falls
  behind or loses NATS sends every call back to the old path (Redis and the
  view at the view's revision) until it has caught up (the next feed starts
  with an empty cache).
- Filled entries expire like their Redis copies (the same TTLs); entries an
  event wrote are current by construction and stay until evicted.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Final, Literal

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from latchkit import bus, envelope, tracing
from latchkit.bus import (
    PERMISSIONS_STREAM,
    PERMISSIONS_SUBJECT_PREFIX,
    BusSettings,
)
from latchkit.retry import Backoff, retry_forever
from services.access.domain import cred_key
from services.access.ports import CredentialRow, PairRow
from services.access.projector import advance, to_rows

log = logging.getLogger("latchkey.access.local_cache")


class _Miss(enum.Enum):
    MISS = enum.auto()


MISS: Final = _Miss.MISS
"""Not in the cache (as opposed to None: cached as "nothing there"). An enum member, so a
checker narrows `x is MISS` away."""
RESETS = Counter("latchkey_access_local_cache_resets_total", "Times the per-process cache was emptied", ["why"])
NEVER = float("inf")


class LocalCache:
    def __init__(self, bus: BusSettings, *, capacity: int, ttl: float, negative_ttl: float,
                 view_watermark: Callable[[], int]) -> None:
        self.bus = bus
        self.capacity = capacity
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.view_watermark = view_watermark
        """The view's applied revision as this process last knew it (no I/O)."""
        self.live = False
        self.following = False
        """True while the feed's subscription is in place: every later event will arrive.
        (`live` comes first: it is set as the feed starts, before it subscribes.)"""
        self.floor = 0
        self.watermark = 0
        self.highest_seen = 0
        self.epoch = 0
        self._partial: dict[int, tuple[int, list[int]]] = {}
        self._pairs: dict[tuple[str, str], tuple[int, PairRow | None, float]] = {}
        self._creds: dict[str, tuple[int, CredentialRow | None, float]] = {}
        self.first_sight = tracing.FirstSight()
        """With tracing on: per pair, the trace of the event that changed it, until the first
        Unlock answered from that change (service.py) adds `access.first_unlock` to it."""

    # ---- reads (the Unlock hot path) ---------------------------------------------------
    def serving(self) -> bool:
        return self.live and self.watermark >= self.view_watermark()

    def answers_at(self, min_revision: int) -> bool:
        """May Unlock answer at this cache's watermark (claiming it as the view revision)?

        Besides `serving` and `min_revision`, the view must have reached the floor: then
        for any key the cache does not hold, Redis and the view are as new as the cache
        (nothing changed it since the floor, or the cache would hold the event), so a miss
        can be answered from them, with what the cache does hold taking precedence.
        """
        view = self.view_watermark()
        return self.live and min_revision <= self.watermark and self.watermark >= view >= self.floor

    def pair(self, door_id: str, user_id: str) -> PairRow | None | Literal[_Miss.MISS]:
        """PairRow, None ("no rule"), or MISS."""
        entry = self._pairs.get((door_id, user_id))
        if entry is None or entry[2] < time.monotonic():
            return MISS
        return entry[1]

    def credential(self, key: str) -> CredentialRow | None | Literal[_Miss.MISS]:
        """CredentialRow, None ("no such credential"), or MISS."""
        entry = self._creds.get(key)
        if entry is None or entry[2] < time.monotonic():
            return MISS
        return entry[1]

    # ---- fills ---------------------------------------------------------------------------
    def fill_ticket(self) -> tuple[int, int] | None:
        """Taken before reading Redis or the view; None when a fill could not be kept anyway."""
        if not self.live:
            return None
        return self.epoch, self.view_watermark()

    def _fill_ok(self, ticket: tuple[int, int] | None) -> bool:
        return ticket is not None and self.live and ticket[0] == self.epoch and ticket[1] >= self.floor

    def fill_pair(self, ticket, door_id: str, user_id: str, row: PairRow | None) -> None:
        if self._fill_ok(ticket):
            ttl = self.ttl if row is not None and row.payload else self.negative_ttl
            self._put(self._pairs, (door_id, user_id), row.version if row else 0, row, time.monotonic() + ttl)

    def fill_credential(self, ticket, key: str, row: CredentialRow | None) -> None:
        if self._fill_ok(ticket):
            ttl = self.ttl if row is not None else self.negative_ttl
            self._put(self._creds, key, row.version if row else 0, row, time.monotonic() + ttl)

    def _put(self, table: dict, key, version: int, row, expires: float) -> None:
        current = table.get(key)
        # Never back to a lower version, expired or not; the same version only to renew it.
        if current is not None and (current[0] > version or (current[0] == version
                                                             and current[2] >= time.monotonic())):
            return
        table[key] = (version, row, expires)
        if len(self._pairs) + len(self._creds) > self.capacity:
            self.reset("full")

    # ---- the feed ------------------------------------------------------------------------
    def apply(self, env) -> None:
        """One permissions event, in stream order."""
        pairs, creds = to_rows(env)
        # First: a clear caused by this very event must raise the floor past it.
        self.highest_seen = max(self.highest_seen, env.revision)
        for row in pairs:
            self._put(self._pairs, (row.door_id, row.user_id), row.version, row if row.payload else None, NEVER)
        if pairs and tracing.ENABLED:
            context = tracing.current_context()  # the feed's consumer span for this event
            for row in pairs:
                self.first_sight.remember((row.door_id, row.user_id), env.revision, context)
        for cred in creds:
            self._put(self._creds, cred_key(cred.kind, cred.secret_hash), cred.version, cred, NEVER)
        self.watermark = advance(self.watermark, self._partial, env.revision, env.revision_event_index,
                                 env.revision_event_count)

    def reset(self, why: str) -> None:
        """Forget everything; fills must then reflect at least what the feed had seen."""
        self._pairs.clear()
        self._creds.clear()
        self.epoch += 1
        self.floor = max(self.floor, self.highest_seen)
        RESETS.labels(why).inc()

    def start(self, floor: int) -> None:
        self.reset("feed started")
        self.floor = max(self.floor, floor)
        self.watermark = floor
        self.highest_seen = max(self.highest_seen, floor)
        self._partial.clear()
        self.live = True

    def stop(self) -> None:
        self.live = self.following = False
        self.reset("feed stopped")

    async def run(self) -> None:
        """Follow the stream, again after every failure (the cache does not answer meanwhile:
        each feed stops it as it ends); the retry wait resets after every event applied."""
        await retry_forever("local cache feed", self._follow, log)

    async def _follow(self, backoff: Backoff) -> None:
        closed = asyncio.get_running_loop().create_future()

        async def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        try:
            async with bus.session(self.bus, name="access-local-cache", closed_cb=on_closed) as (_, js):
                info = await js.stream_info(PERMISSIONS_STREAM)
                last = info.state.last_seq
                floor: int | None = 0
                if last:
                    try:
                        # A stored message always has data; none would fail to parse, as it should.
                        floor = envelope.parse((await js.get_msg(PERMISSIONS_STREAM, last)).data or b"").revision
                    except NotFoundError:
                        floor = None  # purged: the first event this feed sees sets the floor
                failed: list[Exception] = []

                async def on_msg(msg) -> None:
                    try:
                        env = envelope.parse(msg.data)
                        if not self.live:
                            # Everything before this event is gone from the stream: the view has
                            # applied it or nobody ever will. Part of its revision may be gone too.
                            self.start(env.revision - 1 if env.revision_event_index == 0 else env.revision)
                        if tracing.ENABLED:
                            with bus.consumer_span("access.feed", msg):
                                self.apply(env)
                        else:
                            self.apply(env)
                        backoff.reset()  # a successful round: a later failure starts a new outage
                    except Exception as exc:  # any failure: stop answering from a cache we cannot keep
                        failed.append(exc)
                        if not closed.done():
                            closed.set_result(None)

                if floor is not None:
                    self.start(floor)
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
                await js.subscribe(PERMISSIONS_SUBJECT_PREFIX + ">", stream=PERMISSIONS_STREAM, cb=on_msg,
                                   ordered_consumer=True, idle_heartbeat=2.0, config=config)
                self.following = True
                backoff.reset()
                log.info("local cache feed live", extra={"floor": floor, "start_seq": last + 1})
                bus.raise_if_cancelled()  # a cancel lost inside nats-py would leave this wait forever
                await closed
                if failed:
                    raise failed[0]
                raise ConnectionError("nats connection closed")
        finally:
            self.stop()


class PolledWatermark:
    """The view's watermark for a process that does not project: read every `period` seconds.

    Lagging by up to one period only makes the cache's serving rule stricter
    for longer, never looser: the cache answers while its own watermark is at
    least this value, and this value is never ahead of the view.
    """

    def __init__(self, read, period: float = 0.02) -> None:
        self.read = read
        self.period = period
        self.value = 0

    def __call__(self) -> int:
        return self.value

    async def run(self) -> None:
        while True:
            try:
                self.value = await self.read()
            except Exception as exc:  # any failure: keep the last value; the cache rule stays safe
                log.debug("view watermark unreadable", extra={"error": repr(exc)})
            await asyncio.sleep(self.period)  # the polling period, not a synchronisation
