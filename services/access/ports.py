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


@dataclass(frozen=True, slots=True)
class CachedCredential:
    """A credential entry as the unlock cache holds it: `credential_id` is empty for a cached
    "no such credential" (version 0)."""

    version: int
    credential_id: str
    user_id: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class CachedPair:
    """A pair entry as the unlock cache holds it: an empty `payload` is "no rule" (a versioned
    tombstone, or a cached "nothing there" at version 0)."""

    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """One `UnlockCache.lookup`: an earlier answer to the request id, else what the cache
    holds; None is a miss (not held, or not trusted without the projector's lease)."""

    earlier: bytes | None = None
    credential: CachedCredential | None = None
    pair: CachedPair | None = None


CACHE_MISS = CacheLookup()


class UnlockCache(Protocol):
    """The shared cache in front of the unlock view (Redis).

    - Every write is set-if-newer by version: a fill racing the projector can never bring
      back what a higher version replaced; a revoke is a versioned entry, not a delete.
    - Entries are trusted only while the projector holds its lease (`hold_lease`); without
      it `lookup` reports a miss, and earlier answers still replay.
    - Every method raises on a failed or timed-out call: the caller decides what that means.
    """

    async def close(self) -> None: ...

    async def lookup(self, door_id: str, user_id: str = "", credential: str = "",
                     request_id: str = "") -> CacheLookup:
        """In one round trip: the earlier answer to (door, request_id), else the credential
        (by its `cred_key`) and the pair of its user (or of `user_id`) at this door. A
        credential miss or a cached "no such credential" leaves the pair a miss."""
        ...

    async def earlier_answer(self, door_id: str, request_id: str) -> bytes | None: ...

    async def remember_answer(self, door_id: str, request_id: str, answer: bytes) -> None:
        """First answer wins: a retry racing the original cannot replace it."""
        ...

    async def fill_pair(self, door_id: str, user_id: str, row: PairRow | None) -> None:
        """A read-through fill from the view (None: cache "no rule" for a shorter time)."""
        ...

    async def fill_credential(self, key: str, row: CredentialRow | None) -> None: ...

    async def write(self, pairs: list[PairRow], credentials: list[CredentialRow]) -> None:
        """The projector's write-through, set-if-newer, in one round trip."""
        ...

    async def forget(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None:
        """Remove entries outright (only the projector, for keys the view has no row for)."""
        ...

    async def hold_lease(self, seconds: float) -> None:
        """The projector vouches that the cache holds everything its view has, for `seconds`."""
        ...

    async def drop_lease(self) -> None: ...


SpooledRow = tuple[int, str, str, bytes]
"""(sequence, event id, subject, envelope bytes)"""


class DecisionSpool(Protocol):
    """Decision events on local disk until JetStream has them, in the order appended.

    Durable when `append` returns. One process per spool: `open` takes it for this process
    and fails if another one has it. Rows leave only by `delete_through`.
    """

    def open(self) -> None: ...

    async def append(self, rows: list[tuple[str, str, bytes]]) -> None:
        """(event id, subject, envelope bytes) rows, after every row already there."""
        ...

    async def oldest(self, limit: int) -> list[SpooledRow]: ...

    async def delete_through(self, seq: int) -> None:
        """Remove every row up to and including sequence `seq`."""
        ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


class RedisBacklog(Protocol):
    """The keys the projector could not write to the unlock cache, durable until it can.

    Only keys, each kept once however often it changed: the rows are read from the view
    when the cache answers again. Durable when `add` returns.
    """

    async def add(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None: ...

    async def take(self, limit: int) -> tuple[list[tuple[str, str]], list[tuple[int, bytes]]]:
        """Up to `limit` keys of each kind; they stay until `remove`."""
        ...

    async def remove(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None: ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...
