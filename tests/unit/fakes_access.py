"""In-memory implementations of the access service's ports, for unit tests of the service layer.

Each keeps the rule of its port that Unlock relies on (set-if-newer by version, the lease,
a miss without it) and nothing else. `fail` makes every call raise (a dependency down);
`hang` makes every call wait forever (a dependency that accepts and never answers).
"""

from __future__ import annotations

import asyncio

from services.access.domain import cred_key
from services.access.ports import (
    CACHE_MISS,
    CachedCredential,
    CachedPair,
    CacheLookup,
    CredentialRow,
    PairRow,
    SpooledRow,
    ViewBatch,
)


class Switchable:
    """`fail` and `hang`, checked at the start of every call."""

    fail: Exception | None = None
    hang = False

    async def _call(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail


class FakeUnlockCache(Switchable):
    """The `UnlockCache` port in a few dicts; `lookups` counts the one-trip lookups asked."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], CachedPair] = {}
        self.credentials: dict[str, CachedCredential] = {}
        self.answers: dict[tuple[str, str], bytes] = {}
        self.leased = True
        self.lookups = 0

    async def close(self) -> None:
        pass

    async def lookup(self, door_id: str, user_id: str = "", credential: str = "",
                     request_id: str = "") -> CacheLookup:
        self.lookups += 1
        await self._call()
        earlier = self.answers.get((door_id, request_id)) if request_id else None
        if earlier is not None:
            return CacheLookup(earlier=earlier)
        if not self.leased:
            return CACHE_MISS
        cred = None
        if credential:
            cred = self.credentials.get(credential)
            if cred is None:
                return CACHE_MISS
            user_id = cred.user_id
            if not user_id:
                return CacheLookup(credential=cred)
        return CacheLookup(credential=cred, pair=self.pairs.get((door_id, user_id)))

    async def earlier_answer(self, door_id: str, request_id: str) -> bytes | None:
        await self._call()
        return self.answers.get((door_id, request_id))

    async def remember_answer(self, door_id: str, request_id: str, answer: bytes) -> None:
        await self._call()
        self.answers.setdefault((door_id, request_id), answer)

    def _set_pair(self, key: tuple[str, str], entry: CachedPair) -> None:
        current = self.pairs.get(key)
        if current is None or current.version < entry.version:
            self.pairs[key] = entry

    def _set_credential(self, key: str, entry: CachedCredential) -> None:
        current = self.credentials.get(key)
        if current is None or current.version < entry.version:
            self.credentials[key] = entry

    async def fill_pair(self, door_id: str, user_id: str, row: PairRow | None) -> None:
        await self._call()
        self._set_pair((door_id, user_id), CachedPair(row.version, row.payload) if row else CachedPair(0, b""))

    async def fill_credential(self, key: str, row: CredentialRow | None) -> None:
        await self._call()
        self._set_credential(key, CachedCredential(row.version, row.credential_id, row.user_id, row.revoked)
                             if row else CachedCredential(0, "", "", False))

    async def write(self, pairs: list[PairRow], credentials: list[CredentialRow]) -> None:
        await self._call()
        for row in pairs:
            self._set_pair((row.door_id, row.user_id), CachedPair(row.version, row.payload))
        for cred in credentials:
            self._set_credential(cred_key(cred.kind, cred.secret_hash),
                                 CachedCredential(cred.version, cred.credential_id, cred.user_id, cred.revoked))

    async def forget(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None:
        await self._call()
        for key in pairs:
            self.pairs.pop(key, None)
        for kind, secret_hash in credentials:
            self.credentials.pop(cred_key(kind, secret_hash), None)

    async def hold_lease(self, seconds: float) -> None:
        await self._call()
        self.leased = True

    async def drop_lease(self) -> None:
        await self._call()
        self.leased = False


class FakeUnlockView(Switchable):
    """The `UnlockView` port in dicts: rows by version (the deny side wins a tie), one watermark;
    `reads` counts the row lookups."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], PairRow] = {}
        self.credentials: dict[tuple[int, bytes], CredentialRow] = {}
        self.applied = 0
        self.fresh: float | None = None
        self.reads = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def apply(self, batch: ViewBatch) -> None:
        await self._call()
        for row in batch.pairs:
            current = self.pairs.get((row.door_id, row.user_id))
            if current is None or (current.version, not current.payload) < (row.version, not row.payload):
                self.pairs[(row.door_id, row.user_id)] = row
        for cred in batch.credentials:
            current = self.credentials.get((cred.kind, cred.secret_hash))
            if current is None or (current.version, current.revoked) < (cred.version, cred.revoked):
                self.credentials[(cred.kind, cred.secret_hash)] = cred
        self.applied = max(self.applied, batch.watermark)

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None:
        self.reads += 1
        await self._call()
        return self.pairs.get((door_id, user_id))

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        self.reads += 1
        await self._call()
        return self.credentials.get((kind, secret_hash))

    async def progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]:
        await self._call()
        return self.applied, {}

    async def watermark(self) -> int:
        await self._call()
        return self.applied

    async def all_pairs(self) -> list[PairRow]:
        await self._call()
        return list(self.pairs.values())

    async def record_fresh(self, at: float) -> None:
        await self._call()
        self.fresh = max(self.fresh or 0.0, at)

    async def fresh_at(self) -> float | None:
        await self._call()
        return self.fresh


class FakeDecisionSpool(Switchable):
    """The `DecisionSpool` port as a list."""

    def __init__(self) -> None:
        self.rows: list[SpooledRow] = []
        self._seq = 0

    def open(self) -> None:
        pass

    async def append(self, rows: list[tuple[str, str, bytes]]) -> None:
        await self._call()
        for event_id, subject, payload in rows:
            self._seq += 1
            self.rows.append((self._seq, event_id, subject, payload))

    async def oldest(self, limit: int) -> list[SpooledRow]:
        await self._call()
        return self.rows[:limit]

    async def delete_through(self, seq: int) -> None:
        await self._call()
        self.rows = [row for row in self.rows if row[0] > seq]

    async def count(self) -> int:
        await self._call()
        return len(self.rows)

    async def close(self) -> None:
        pass


class FakeRedisBacklog(Switchable):
    """The `RedisBacklog` port as two sets."""

    def __init__(self) -> None:
        self.pairs: set[tuple[str, str]] = set()
        self.credentials: set[tuple[int, bytes]] = set()

    async def add(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None:
        await self._call()
        self.pairs.update(pairs)
        self.credentials.update(credentials)

    async def take(self, limit: int) -> tuple[list[tuple[str, str]], list[tuple[int, bytes]]]:
        await self._call()
        return sorted(self.pairs)[:limit], sorted(self.credentials)[:limit]

    async def remove(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None:
        await self._call()
        self.pairs.difference_update(pairs)
        self.credentials.difference_update(credentials)

    async def count(self) -> int:
        await self._call()
        return len(self.pairs) + len(self.credentials)

    async def close(self) -> None:
        pass
