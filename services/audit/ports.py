"""The audit store port; the contract suite holds every implementation to these docstrings."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from services.audit.domain import AuditRecord, ChainBreak


class AuditWriterFenced(Exception):
    """A newer audit writer holds the store: this one must stop appending (and stop consuming).

    Raised by `append` once another process has opened the same store for
    writing (a rolling update, a split brain); every later `append` of this
    store raises it too. Nothing this writer had stored is lost or overwritten.
    """


@dataclass(frozen=True)
class AuditQuery:
    """Empty fields match anything; times are microseconds since the epoch, [start, end).

    The time range is on `source_time_us` (when the event happened), whatever
    day it was stored: a decision spooled at a door and stored days later is
    found by its own time, the same in every store.
    """

    user_id: str = ""
    door_id: str = ""
    types: tuple[str, ...] = ()
    start_us: int = 0
    end_us: int = 0


class AuditStore(Protocol):
    async def open(self) -> None:
        """Connect and become the store's one writer (a writer opened before is fenced out)."""
        ...

    async def close(self) -> None: ...

    async def append(self, records: list[AuditRecord], stream: str = "", stream_seq: int = 0) -> int:
        """Store new records durably, chained, in list order; a known event_id is skipped.

        With `stream`, also records (in the same write) that the stream has been
        consumed through `stream_seq`. Returns how many were new. Durable when it
        returns (the caller acks then). All or nothing as seen by readers: after a
        failure (or a crash) none of the records is visible and the chain goes on
        from the last successful append. Sequences only grow, whatever the clock
        does. Raises `AuditWriterFenced` when a newer writer has taken the store.
        """
        ...

    async def position(self, stream: str) -> int:
        """The stream sequence recorded by the last `append` for `stream` (0 if none)."""
        ...

    async def read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        """Matching records with seq > after_seq, oldest first, at most `limit`.

        Fewer than `limit` only when no more matching records are stored yet,
        however many non-matching records lie between them.
        """
        ...

    def read_occurred(self, query: AuditQuery, after: tuple[int, int, int] | None
                      ) -> AsyncGenerator[AuditRecord, None]:
        """Matching records of a closed range (`query.end_us` set) in occurrence order, strictly after `after`.

        Occurrence order is `domain.occurrence_key`: source time, then causal rank,
        then seq; `after` is such a key (None: from the start). A snapshot of the
        records stored when iteration begins. Memory stays bounded however large
        the range: records are produced page by page, never sorted all at once.
        """
        ...

    async def last_seq(self) -> int:
        """The seq of the newest record this store appended or found at `open` (0 if none)."""
        ...

    async def verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        """Recompute the chain over records stored in [start_us, end_us) (0 = open): (checked, first break).

        The first record of the range is checked against the record before it,
        however long ago that was; records expired under a retention TTL are
        not a break (the oldest surviving record is the anchor).
        """
        ...

    async def park(self, stream: str, stream_seq: int, raw: bytes, error: str) -> None:
        """Keep an undecodable message with its raw bytes (idempotent per stream and sequence)."""
        ...

    async def parked(self) -> list[tuple[str, int, bytes, str]]: ...
