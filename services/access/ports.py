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

    - `apply` is atomic per row and idempotent: a row is written only if its
      version is higher than the stored one (a lower or equal version never
      overwrites; an empty payload is a versioned tombstone, not a delete).
      Applying the same batch twice, or batches in any order, converges.
    - `progress` returns what the last `apply` recorded.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, batch: ViewBatch) -> None: ...

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None: ...

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        """The active credential with this secret, else the newest revoked one, else None."""
        ...

    async def progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]: ...

    async def watermark(self) -> int:
        """The highest revision applied with every revision below it applied too."""
        ...

    async def all_pairs(self) -> list[PairRow]: ...
