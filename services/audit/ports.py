"""The audit store port; the contract suite holds every implementation to these docstrings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.audit.domain import AuditRecord, ChainBreak


@dataclass(frozen=True)
class AuditQuery:
    """Empty fields match anything; times are microseconds since the epoch, [start, end)."""

    user_id: str = ""
    door_id: str = ""
    types: tuple[str, ...] = ()
    start_us: int = 0
    end_us: int = 0


class AuditStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, records: list[AuditRecord], stream: str = "", stream_seq: int = 0) -> int:
        """Store new records durably, chained, in list order; a known event_id is skipped.

        With `stream`, also records (in the same write) that the stream has been
        consumed through `stream_seq`. Returns how many were new. Durable when it
        returns (the caller acks then).
        """
        ...

    async def position(self, stream: str) -> int:
        """The stream sequence recorded by the last `append` for `stream` (0 if none)."""
        ...

    async def read(self, query: AuditQuery, after_seq: int, limit: int) -> list[AuditRecord]:
        """Matching records with seq > after_seq, oldest first, at most `limit`."""
        ...

    async def last_seq(self) -> int: ...

    async def verify(self, start_us: int, end_us: int) -> tuple[int, ChainBreak | None]:
        """Recompute the chain over records stored in [start_us, end_us) (0 = open)."""
        ...

    async def park(self, stream: str, stream_seq: int, raw: bytes, error: str) -> None:
        """Keep an undecodable message with its raw bytes (idempotent per stream and sequence)."""
        ...

    async def parked(self) -> list[tuple[str, int, bytes, str]]: ...
