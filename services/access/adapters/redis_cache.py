"""Redis in front of the unlock view.

Entries are hashes {v: version, p: payload} (pairs) or {v, id, u, r}
(credentials). Every write goes through one Lua script that writes only if
the version is higher, so a read-through fill racing the projector can never
bring back a revoked grant, and a revoke is a versioned entry, not a DEL (a DEL
would let the slower fill write the old grant back). Versions are revisions, far below 2^53 (Lua numbers are
doubles). "Nothing there" is cached too, as version 0, for a shorter TTL.

Unlock by credential needs the credential then the pair: `LOOKUP` does both
inside Redis, so a cache hit is one round trip.

Workers trust the entries only while the instance's projector holds its
lease key (`lk:live:<instance>`, a short TTL it keeps renewing). The
projector lets the lease lapse before its view moves past anything Redis
missed (an outage, a partition) and takes it again only once those keys are
written, so a grant revoked while Redis was unreachable is never read back
from it: without the lease, `LOOKUP` reports a miss and the view answers.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from services.access.domain import cred_key
from services.access.ports import (
    CACHE_MISS,
    CachedCredential,
    CachedPair,
    CacheLookup,
    CredentialRow,
    PairRow,
)

__all__ = ["RedisUnlockCache", "cred_key"]

SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# ARGV: door_id, user_id or '', credential key or '', request_id or '', lease key.
# Returns {earlier answer or false, cred fields or false, pair fields or false};
# without the lease the entries are not trusted: a miss.
LOOKUP = """
if ARGV[4] ~= '' then
  local earlier = redis.call('GET', 'lk:r:' .. ARGV[1] .. ':' .. ARGV[4])
  if earlier then return {earlier, false, false} end
end
if redis.call('EXISTS', ARGV[5]) == 0 then return {false, false, false} end
local user = ARGV[2]
local cred = false
if ARGV[3] ~= '' then
  cred = redis.call('HMGET', 'lk:c:' .. ARGV[3], 'v', 'id', 'u', 'r')
  if not cred[1] then return {false, false, false} end
  user = cred[3]
  if user == '' then return {false, cred, false} end
end
local pair = redis.call('HMGET', 'lk:p:' .. ARGV[1] .. ':' .. user, 'v', 'p')
if not pair[1] then pair = false end
return {false, cred, pair}
"""
REPLAY_TTL_SECONDS = 24 * 3600


class RedisUnlockCache:
    """The `UnlockCache` port on Redis: the raw replies are decoded here, nowhere else."""

    def __init__(self, url: str, ttl: int, negative_ttl: int, *, instance: str = "local") -> None:
        self.client = aioredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                              max_connections=256)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.lease_key = f"lk:live:{instance}"
        self._set = self.client.register_script(SET_IF_NEWER)
        self._lookup = self.client.register_script(LOOKUP)

    async def close(self) -> None:
        await self.client.aclose()

    async def lookup(self, door_id: str, user_id: str = "", credential: str = "", request_id: str = "") -> CacheLookup:
        earlier, cred, pair = await self._lookup(args=[door_id, user_id, credential, request_id, self.lease_key])
        if earlier:
            return CacheLookup(earlier=earlier)
        if not cred and not pair:
            return CACHE_MISS
        # HMGET fields: credentials (v, id, u, r), pairs (v, p); a missing field is None.
        return CacheLookup(
            credential=CachedCredential(int(cred[0]), (cred[1] or b"").decode(), (cred[2] or b"").decode(),
                                        cred[3] == b"1") if cred else None,
            pair=CachedPair(int(pair[0]), pair[1] or b"") if pair else None)

    async def hold_lease(self, seconds: float) -> None:
        """The projector vouches that Redis holds everything its view has, for `seconds`."""
        await self.client.set(self.lease_key, b"1", px=max(int(seconds * 1000), 1))

    async def drop_lease(self) -> None:
        await self.client.delete(self.lease_key)

    async def remember_answer(self, door_id: str, request_id: str, answer: bytes) -> None:
        """First answer wins: a retry racing the original cannot replace it."""
        await self.client.set(f"lk:r:{door_id}:{request_id}", answer, nx=True, ex=REPLAY_TTL_SECONDS)

    async def earlier_answer(self, door_id: str, request_id: str) -> bytes | None:
        # The client decodes nothing (no decode_responses): GET gives bytes, whatever redis' hints say.
        return cast(bytes | None, await self.client.get(f"lk:r:{door_id}:{request_id}"))

    def _pair_args(self, row: PairRow | None, door_id: str, user_id: str):
        if row is None:
            return [f"lk:p:{door_id}:{user_id}"], [0, self.negative_ttl, "p", b""]
        ttl = self.ttl if row.payload else self.negative_ttl
        return [f"lk:p:{row.door_id}:{row.user_id}"], [row.version, ttl, "p", row.payload]

    def _cred_args(self, row: CredentialRow | None, key: str):
        if row is None:
            return [f"lk:c:{key}"], [0, self.negative_ttl, "id", "", "u", "", "r", 0]
        return ([f"lk:c:{cred_key(row.kind, row.secret_hash)}"],
                [row.version, self.ttl, "id", row.credential_id, "u", row.user_id, "r", int(row.revoked)])

    async def fill_pair(self, door_id: str, user_id: str, row: PairRow | None) -> None:
        keys, args = self._pair_args(row, door_id, user_id)
        await self._set(keys=keys, args=args)

    async def fill_credential(self, key: str, row: CredentialRow | None) -> None:
        keys, args = self._cred_args(row, key)
        await self._set(keys=keys, args=args)

    async def write(self, pairs: list[PairRow], credentials: list[CredentialRow]) -> None:
        """The projector's write-through: every row, set-if-newer, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for row in pairs:
                keys, args = self._pair_args(row, row.door_id, row.user_id)
                await self._set(keys=keys, args=args, client=pipe)
            for cred in credentials:
                keys, args = self._cred_args(cred, "")
                await self._set(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def forget(self, pairs: list[tuple[str, str]], credentials: list[tuple[int, bytes]]) -> None:
        """Remove entries outright (keys the view has no row for; only the projector, under its lease rules)."""
        keys = [f"lk:p:{door_id}:{user_id}" for door_id, user_id in pairs]
        keys += [f"lk:c:{cred_key(kind, secret_hash)}" for kind, secret_hash in credentials]
        if keys:
            await self.client.delete(*keys)
