"""Occurrence order over partitions stored in another order: a sweep merge with bounded memory.

A store whose partitions are clustered by storage order (the CQL store's
parts and door/user days) cannot page its rows by source time. It knows, per
partition, a lower bound of the source times it holds (its index). The sweep
goes forward in source time: a partition is read only when the sweep reaches
its lower bound, and only its rows up to a horizon (`slice_us` past that
point, at most `keep` of them) stay in memory; it comes back later, from the
first row it left out. A row is sent only once every partition that could
hold an earlier one has been read up to it.

Memory: the rows within one slice of the sweep point, at most `keep` per
partition, and one small entry per partition still to be read. A partition
with a few late events (a decision spooled at a door, stored hours after it
happened) costs a second read, not a whole partition held for hours.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from services.audit.domain import AuditRecord, occurrence_key

Key = tuple[int, int, int]


@dataclass(frozen=True)
class Source:
    low_us: int
    """No row of the partition happened earlier (an index bound; it may be lower than the truth)."""
    slice_us: int
    """How far past the point it is read at a read keeps rows."""
    name: object
    """What the loader reads."""


class Window:
    """The `keep` smallest keys of the rows before `horizon_us`; where the rest begins."""

    def __init__(self, horizon_us: int, keep: int) -> None:
        self.horizon_us, self.keep = horizon_us, keep
        self._kept: list = []  # a max-heap by key (negated components)
        self.rest_us: int | None = None
        """The earliest source time of the rows left out (None: none was)."""

    def offer(self, r: AuditRecord) -> None:
        if r.source_time_us >= self.horizon_us:
            self._left_out(r.source_time_us)
            return
        t, rank, seq = occurrence_key(r)
        heapq.heappush(self._kept, ((-t, -rank, -seq), r))
        if len(self._kept) > self.keep:
            self._left_out(heapq.heappop(self._kept)[1].source_time_us)

    def _left_out(self, t: int) -> None:
        self.rest_us = t if self.rest_us is None else min(self.rest_us, t)

    def rows(self) -> list[AuditRecord]:
        return sorted((r for _, r in self._kept), key=occurrence_key)


async def merge(sources: list[Source], read: Callable[[object, Key | None, Window], Awaitable[None]],
                after: Key | None, keep: int) -> AsyncIterator[AuditRecord]:
    """Every row of `sources` with a key past `after`, in occurrence order.

    `read(name, resume, window)` offers the window every row of the partition
    whose key is past `resume` (already filtered by the query).
    """
    tick = itertools.count()
    pending = [(s.low_us, next(tick), s, after) for s in sources]
    heapq.heapify(pending)
    ready: list = []
    while pending or ready:
        # A pending partition may hold a row at (or tied with) the next one to send: read it first.
        while pending and (not ready or pending[0][0] <= ready[0][0][0]):
            low, _, source, resume = heapq.heappop(pending)
            window = Window(low + source.slice_us, keep)
            await read(source.name, resume, window)
            rows = window.rows()
            for r in rows:
                heapq.heappush(ready, (occurrence_key(r), r))
            if window.rest_us is not None:
                # The rows left out all come after the kept ones: resume after the last kept key.
                heapq.heappush(pending, (window.rest_us, next(tick), source,
                                         occurrence_key(rows[-1]) if rows else resume))
        if ready:
            yield heapq.heappop(ready)[1]
