"""Redis in front of the view, on the real test server: set-if-newer, negative entries, one-trip lookups."""

from __future__ import annotations

import uuid

import pytest

from services.access.adapters.redis_cache import RedisUnlockCache, cred_key
from services.access.ports import CachedCredential, CachedPair, CacheLookup, CredentialRow, PairRow
from tests.waiting import until


@pytest.fixture
async def cache(urls):
    c = RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5, instance=str(uuid.uuid4()))
    await c.hold_lease(60)  # as the projector does while Redis has everything
    yield c
    await c.close()


def ids():
    return str(uuid.uuid4()), str(uuid.uuid4())


async def test_a_racing_fill_cannot_resurrect_a_revoked_grant(cache):
    door, user = ids()
    # The projector writes the revoke (version 8) first; a slow read-through fill
    # that read version 7 from the view lands afterwards and must be ignored.
    await cache.write([PairRow(door, user, 8, b"")], [])
    await cache.fill_pair(door, user, PairRow(door, user, 7, b"granted"))
    assert (await cache.lookup(door, user)).pair == CachedPair(8, b"")


async def test_negative_entry_is_overridden_by_any_real_version(cache):
    door, user = ids()
    await cache.fill_pair(door, user, None)
    assert (await cache.lookup(door, user)).pair == CachedPair(0, b"")
    assert await cache.client.ttl(f"lk:p:{door}:{user}") <= 5
    await cache.write([PairRow(door, user, 1, b"granted")], [])
    assert (await cache.lookup(door, user)).pair == CachedPair(1, b"granted")


async def test_lookup_by_credential_resolves_user_and_pair_in_one_call(cache):
    door, user = ids()
    secret = uuid.uuid4().bytes * 2
    cred = CredentialRow(str(uuid.uuid4()), user, 1, secret, False, 3)
    await cache.write([PairRow(door, user, 4, b"rules")], [cred])
    assert await cache.lookup(door, credential=cred_key(1, secret)) == CacheLookup(
        credential=CachedCredential(3, cred.credential_id, user, False), pair=CachedPair(4, b"rules"))
    # Unknown credential: a miss, which the service fills from the view.
    assert await cache.lookup(door, credential=cred_key(1, b"x" * 32)) == CacheLookup()
    # Cached as "no such credential": known absent, and no pair looked up.
    await cache.fill_credential(cred_key(1, b"y" * 32), None)
    assert await cache.lookup(door, credential=cred_key(1, b"y" * 32)) == CacheLookup(
        credential=CachedCredential(0, "", "", False))


async def test_first_answer_for_a_request_id_wins(cache):
    door, _ = ids()
    await cache.remember_answer(door, "r1", b"first")
    await cache.remember_answer(door, "r1", b"second")
    assert (await cache.lookup(door, user_id="u", request_id="r1")).earlier == b"first"


async def test_without_the_projectors_lease_entries_are_a_miss_but_answers_still_replay(cache):
    door, user = ids()
    await cache.write([PairRow(door, user, 4, b"rules")], [])
    await cache.remember_answer(door, "r1", b"first")
    await cache.drop_lease()
    assert await cache.lookup(door, user) == CacheLookup()
    assert (await cache.lookup(door, user, request_id="r1")).earlier == b"first"
    await cache.hold_lease(0.2)
    assert (await cache.lookup(door, user)).pair == CachedPair(4, b"rules")
    # The lease is a TTL: unrenewed, it lapses by itself.
    await until(lambda: _lapsed(cache), "the lease to lapse", limit_s=5)
    assert await cache.lookup(door, user) == CacheLookup()


async def _lapsed(cache) -> bool:
    return not await cache.client.exists(cache.lease_key)
