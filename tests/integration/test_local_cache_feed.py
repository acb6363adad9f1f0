"""The per-process cache's feed on the real stack: permission changes reach it, a NATS outage stops it."""

from __future__ import annotations

import asyncio

import nats
import pytest
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.bus import PERMISSIONS_STREAM, BusSettings, ensure_streams
from services.access.local_cache import MISS, LocalCache
from tests.waiting import until


@pytest.fixture
async def local(urls, permissions):
    # Other modules' databases published their own revisions to this stream: start from a
    # purged stream, so the revisions this feed sees are this module's database's only.
    bus = BusSettings(url=urls.nats_url, duplicate_window_s=600.0)
    nc = await nats.connect(urls.nats_url)
    await ensure_streams(nc.jetstream(), bus)
    await nc.jetstream().purge_stream(PERMISSIONS_STREAM)
    await nc.close()
    cache = LocalCache(bus, capacity=1000, ttl=60,
                       negative_ttl=5, view_watermark=lambda: 0)
    task = asyncio.create_task(cache.run())
    yield cache
    task.cancel()
    # nats-py can swallow a cancel (Python 3.11's wait_for); the feed must end anyway
    # (bus.raise_if_cancelled), within the 5 s the server grants a cancelled job at shutdown.
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the cancelled feed did not end"


async def test_grants_and_revokes_reach_the_cache_and_an_outage_empties_it(stack, admin, local):
    user = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="feed")))).user
    door = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="feed", time_zone="UTC")))).door

    async def reached(revision):
        return local.serving() and local.watermark >= revision

    async def following():
        return local.following

    # A grant made before the feed subscribed is below its floor (it starts after the
    # stream's last message): the cache would rightly not hold it. This test wants it fed.
    await until(following, "the feed to subscribe")
    granted = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id,
                                                                           door_id=door.door_id)))
    await until(lambda: reached(granted.revision), "the grant's revision in the cache")
    row = local.pair(door.door_id, user.user_id)
    assert row is not MISS and row.payload
    revoked = await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=granted.grant.grant_id))
    await until(lambda: reached(revoked.revision), "the revoke's revision in the cache")
    assert local.pair(door.door_id, user.user_id) is None

    stack.stop_component("nats")
    try:
        async def stopped():
            return not local.serving()

        await until(stopped, "the cache to stop answering without NATS")
        assert local.pair(door.door_id, user.user_id) is MISS
    finally:
        stack.start_component("nats")
    # Back: it answers again, and keeps only fills made after the view reached the stream's end.
    await until(lambda: reached(revoked.revision), "the feed to come back")
    assert local.floor >= revoked.revision
