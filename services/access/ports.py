"""The access service's ports. Their docstrings are the contract the contract suite checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PairRow:
    """One (door, user) pair: `payload` is a serialized `AccessChanged`, empty when no rule is left."""

    door_id: str
    user_id: str
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CredentialRow:
    credential_id: str
    user_id: str
    kind: int
    secret_hash: bytes
    revoked: bool
    version: int


@dataclass
class ViewBatch:
    """What one projector round writes, plus the progress it reaches."""

    pairs: list[PairRow] = field(default_factory=list)
    credentials: list[CredentialRow] = field(default_factory=list)
    watermark: int = 0
    partial: dict[int, tuple[int, list[int]]] = field(default_factory=dict)
    """revision -> (events in that revision, indices applied) above the watermark."""


class UnlockView(Protocol):
    """The durable unlock view.

    - `apply` is atomic per row and idempotent. Rows are ordered by version
      first: a lower version never overwrites a higher one. At an equal
      version the deny side wins (an empty payload, a revoked credential);
      between two rows that are both denies or both grants, the greater bytes
      win (the payload; for credentials the user id). An empty payload is a
      versioned tombstone, not a delete. So applying the same batch twice, or
      batches in any order, leaves the same rows (ScyllaDB gets this from
      write timestamps and its equal-timestamp rule; the embedded view compares
      in SQL). Versions are permissions revisions, 0 <= version < 2**62.
    - Progress (`progress`, `watermark`) belongs to the instance the view was
      built for (LATCHKEY_ACCESS_INSTANCE); the rows are shared by every
      instance using the same store. `apply` merges the batch's progress into
      the stored one: the watermark becomes the greater of the two, and each
      revision above it keeps every event index either side has seen. So
      progress never goes back, whatever order batches land in (a stale batch
      after a restart, a lower watermark from a concurrent writer).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, batch: ViewBatch) -> None: ...

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None: ...

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        """The active credential with this secret, else the newest revoked one, else None."""
        ...

    async def progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]:
        """This instance's (watermark, {revision above it: (event count, sorted indices applied)})."""
        ...

    async def watermark(self) -> int:
        """This instance's watermark: the highest revision applied with every revision below it applied too."""
        ...

    async def all_pairs(self) -> list[PairRow]: ...

    async def record_fresh(self, at: float) -> None:
        """Record that at `at` (wall time, seconds since the epoch) this instance's view held
        everything the PERMISSIONS stream did. The newest time wins: an older one recorded
        later changes nothing. Written by the projector, read by every process of the instance."""
        ...

    async def fresh_at(self) -> float | None:
        """The newest time `record_fresh` recorded for this instance; None if it never did."""
        ...
