"""The projector's Redis rules with in-memory ports: a failed write-through lets the lease go and
records the keys Redis missed; the next renewal writes them from the view before taking it back."""

from __future__ import annotations

from latchkit.bus import BusSettings
from services.access.ports import CachedPair, CredentialRow, PairRow, ViewBatch
from services.access.projector import Projector
from tests.unit.fakes_access import FakeRedisBacklog, FakeUnlockCache, FakeUnlockView

BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)


async def test_keys_redis_missed_are_written_from_the_view_before_the_lease_is_taken_again():
    view, cache, backlog = FakeUnlockView(), FakeUnlockCache(), FakeRedisBacklog()
    projector = Projector(view, cache, BUS, backlog, instance="unit", lease_seconds=0.01)
    # Redis is current: the projector holds the lease and writes through.
    await projector.keep_redis_current()
    await projector.store(ViewBatch(pairs=[PairRow("d", "u", 1, b"granted")], watermark=1))
    assert cache.pairs[("d", "u")] == CachedPair(1, b"granted")

    # Redis fails: the revoke reaches the view only, and its key waits in the backlog.
    cache.fail = ConnectionError("redis down")
    card = CredentialRow("c", "u", 1, b"h" * 32, True, 2)
    await projector.store(ViewBatch(pairs=[PairRow("d", "u", 2, b"")], credentials=[card], watermark=2))
    assert view.pairs[("d", "u")].version == 2
    assert (backlog.pairs, backlog.credentials) == ({("d", "u")}, {(1, b"h" * 32)})
    assert cache.pairs[("d", "u")] == CachedPair(1, b"granted")

    # Redis answers again, without the lease (it lapsed): the renewal writes the backlog first.
    cache.fail = None
    cache.leased = False
    await projector.keep_redis_current()
    assert cache.pairs[("d", "u")] == CachedPair(2, b"")
    assert cache.credentials["1:" + (b"h" * 32).hex()].revoked
    assert await backlog.count() == 0
    assert cache.leased
