"""One contract for every UnlockView: versions decide, tombstones stay, order does not matter.

The embedded (SQLite) view always runs; the Scylla view joins the parameter
list when LATCHKEY_SCYLLA_HOSTS names a cluster.
"""

from __future__ import annotations

import os
import random
import uuid

import pytest

from services.access.ports import CredentialRow, PairRow, ViewBatch

BACKENDS = ["embedded"] + (["scylla"] if os.environ.get("LATCHKEY_SCYLLA_HOSTS") else [])


@pytest.fixture(params=BACKENDS)
async def view(request, tmp_path):
    if request.param == "embedded":
        from services.access.adapters.sqlite_view import SqliteUnlockView

        store = SqliteUnlockView(tmp_path / "view.sqlite")
    else:
        from latchkit.scylla import ScyllaSettings
        from services.access.adapters.scylla_view import ScyllaUnlockView, apply_schema

        settings = ScyllaSettings.from_env()
        settings = settings.with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
        await apply_schema(settings, replication_factor=1)
        store = ScyllaUnlockView(settings)
    await store.open()
    yield store
    await store.close()


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
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 4, b"four"), PairRow(door, user, 5, b"other")]))
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 5, b"five")]))
    assert await view.get_pair(door, user) == PairRow(door, user, 5, b"five")


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
