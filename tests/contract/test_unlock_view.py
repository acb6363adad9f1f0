"""One contract for every UnlockView: versions decide, ties are settled by one rule, progress only grows.

Both legs always run: the embedded (SQLite) view and the Scylla view, against
the session's CQL engine (`cql_settings`); each Scylla test gets its own
keyspace.
"""

from __future__ import annotations

import random
import uuid

import pytest

from services.access.ports import CredentialRow, PairRow, ViewBatch

BACKENDS = ["embedded", "scylla"]


@pytest.fixture(params=BACKENDS)
async def open_view(request, tmp_path):
    """Opens views on one store (one SQLite file, or one keyspace), each for the instance it is given."""
    if request.param == "embedded":
        from services.access.adapters.sqlite_view import SqliteUnlockView

        def make(instance: str):
            return SqliteUnlockView(tmp_path / "view.sqlite", instance)
    else:
        from services.access.adapters.scylla_view import ScyllaUnlockView, apply_schema

        settings = request.getfixturevalue("cql_settings").with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
        await apply_schema(settings, replication_factor=1)

        def make(instance: str):
            return ScyllaUnlockView(settings, instance)

    opened = []

    async def open_one(instance: str = "a"):
        store = make(instance)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def view(open_view):
    return await open_view("a")


def ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


async def test_higher_version_wins_in_any_order(view):
    door, user = ids()
    rows = [PairRow(door, user, v, f"rules-{v}".encode()) for v in range(1, 8)]
    random.Random(7).shuffle(rows)
    for row in rows:
        await view.apply(ViewBatch(pairs=[row]))
    assert await view.get_pair(door, user) == PairRow(door, user, 7, b"rules-7")


async def test_lower_or_equal_version_never_overwrites_and_replay_is_harmless(view):
    door, user = ids()
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 5, b"five")]))
    # A lower version loses; at version 5, "other" and "five" tie and the greater bytes win.
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 4, b"four"), PairRow(door, user, 5, b"other")]))
    # Replaying the losing write changes nothing.
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 5, b"five")]))
    assert await view.get_pair(door, user) == PairRow(door, user, 5, b"other")


@pytest.mark.parametrize("revoke_first", [False, True])
async def test_at_an_equal_version_the_revoke_wins_in_either_order(view, revoke_first):
    door, user = ids()
    writes = [PairRow(door, user, 6, b"granted"), PairRow(door, user, 6, b"")]
    if revoke_first:
        writes.reverse()
    # The grant and the revoke carry one version; whichever arrives last, the revoke stays.
    for row in writes:
        await view.apply(ViewBatch(pairs=[row]))
    assert await view.get_pair(door, user) == PairRow(door, user, 6, b"")


@pytest.mark.parametrize("revoke_first", [False, True])
async def test_at_an_equal_version_the_revoked_credential_wins_in_either_order(view, revoke_first):
    cred, user = ids()
    secret = uuid.uuid4().bytes * 2
    writes = [CredentialRow(cred, user, 1, secret, False, 4), CredentialRow(cred, user, 1, secret, True, 4)]
    if revoke_first:
        writes.reverse()
    for row in writes:
        await view.apply(ViewBatch(credentials=[row]))
    assert await view.get_credential(1, secret) == CredentialRow(cred, user, 1, secret, True, 4)


async def test_revoke_is_a_versioned_tombstone(view):
    door, user = ids()
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 3, b"granted")]))
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 4, b"")]))
    # A late, older grant cannot bring the pair back.
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 3, b"granted")]))
    assert await view.get_pair(door, user) == PairRow(door, user, 4, b"")


async def test_unknown_pair_is_none(view):
    assert await view.get_pair(*ids()) is None


async def test_credential_lookup_prefers_the_active_one(view):
    user = str(uuid.uuid4())
    secret = uuid.uuid4().bytes * 2
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    await view.apply(ViewBatch(credentials=[CredentialRow(old, user, 1, secret, False, 2)]))
    await view.apply(ViewBatch(credentials=[CredentialRow(old, user, 1, secret, True, 3)]))
    revoked = await view.get_credential(1, secret)
    assert (revoked.credential_id, revoked.revoked) == (old, True)
    await view.apply(ViewBatch(credentials=[CredentialRow(new, user, 1, secret, False, 9)]))
    active = await view.get_credential(1, secret)
    assert (active.credential_id, active.revoked) == (new, False)
    # A stale "active" for the revoked one changes nothing.
    await view.apply(ViewBatch(credentials=[CredentialRow(old, user, 1, secret, False, 2)]))
    assert (await view.get_credential(1, secret)).credential_id == new
    assert await view.get_credential(2, secret) is None


async def test_progress_is_recorded_with_the_batch(view):
    watermark, _ = await view.progress()
    await view.apply(ViewBatch(watermark=watermark + 3, partial={watermark + 5: (2, [0])}))
    assert await view.progress() == (watermark + 3, {watermark + 5: (2, [0])})
    assert await view.watermark() == watermark + 3
    # The watermark never goes back.
    await view.apply(ViewBatch(watermark=watermark + 1, partial={}))
    assert await view.watermark() == watermark + 3


async def test_a_stale_or_lower_batch_never_regresses_progress(open_view):
    view = await open_view("a")
    # Progress before a restart: revision 5 has events 0 and 1 of 3 applied.
    await view.apply(ViewBatch(watermark=3, partial={5: (3, [0, 1])}))
    # After the restart, a stale batch at the same watermark (from before the one above, landing
    # after it) loses nothing.
    restarted = await open_view("a")
    await restarted.apply(ViewBatch(watermark=3, partial={5: (3, [0])}))
    assert await view.progress() == (3, {5: (3, [0, 1])})
    # A batch with a lower watermark moves neither the watermark nor the partial revisions back.
    await view.apply(ViewBatch(watermark=1, partial={2: (1, [0])}))
    assert await view.progress() == (3, {5: (3, [0, 1])})
    # Progress goes on: revision 4 done and 5 completed, so the watermark passes both.
    await view.apply(ViewBatch(watermark=5, partial={7: (2, [1])}))
    assert await view.progress() == (5, {7: (2, [1])})


async def test_each_instance_has_its_own_progress(open_view):
    first, second = await open_view("access-0"), await open_view("access-1")
    await first.apply(ViewBatch(watermark=9, partial={11: (2, [0])}))
    await second.apply(ViewBatch(watermark=4, partial={6: (3, [2])}))
    # One instance's progress, lower or higher, leaves the other's as it was.
    assert await first.progress() == (9, {11: (2, [0])})
    assert await second.progress() == (4, {6: (3, [2])})
    # The rows themselves are shared: what one instance applies, the other reads.
    door, user = ids()
    await first.apply(ViewBatch(pairs=[PairRow(door, user, 9, b"granted")], watermark=9))
    assert await second.get_pair(door, user) == PairRow(door, user, 9, b"granted")


async def test_freshness_is_per_instance_newest_wins_and_every_process_reads_it(open_view):
    # 1. An instance that never proved its view fresh says so.
    projecting = await open_view("fresh-a")
    assert await projecting.fresh_at() is None
    # 2. A proof recorded by the projecting process is what another process of the instance reads.
    await projecting.record_fresh(1_700_000_000.25)
    reader = await open_view("fresh-a")
    assert await reader.fresh_at() == 1_700_000_000.25
    # 3. An older proof recorded later (a delayed write) changes nothing; a newer one wins.
    await projecting.record_fresh(1_700_000_000.0)
    assert await reader.fresh_at() == 1_700_000_000.25
    await projecting.record_fresh(1_700_000_001.5)
    assert await reader.fresh_at() == 1_700_000_001.5
    # 4. Another instance's proof is its own.
    other = await open_view("fresh-b")
    assert await other.fresh_at() is None
