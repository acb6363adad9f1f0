"""Unlock (acked durability, the default) answers only once its decision is durable, and when
that cannot happen within the caller's deadline it answers UNAVAILABLE, never GRANTED."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from latchkit import secret_hash
from latchkit.bus import BusSettings
from latchkit.errors import Unavailable
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.decisions import DecisionPublisher
from services.access.domain import DenialThrottle
from services.access.ports import CredentialRow, PairRow, ViewBatch
from services.access.service import UnlockService
from tests.integration.test_decision_spool import stored_decisions

KEY = b"k" * 32


class BrokenSpool(SqliteDecisionSpool):
    """A spool whose every write fails (a full disk)."""

    def _append(self, rows):
        raise sqlite3.OperationalError("database or disk is full")


async def granted_door(urls, tmp_path, spool: SqliteDecisionSpool, nats_url: str):
    """An UnlockService with one granted card, its publisher running; returns (service, door, secret, tasks)."""
    door, user, secret = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    granted = ev.AccessChanged(door_id=door, user_id=user, door_time_zone="UTC", rules=[ev.AccessRule(grant_id="g")])
    await view.apply(ViewBatch(pairs=[PairRow(door, user, 2, granted.SerializeToString())],
                               credentials=[CredentialRow(str(uuid.uuid4()), user, 1,
                                                          secret_hash.hash_secret(KEY, 1, secret), False, 1)],
                               watermark=2))
    publisher = DecisionPublisher(spool, BusSettings(url=nats_url, duplicate_window_s=600.0))
    service = UnlockService(view, RedisUnlockCache(urls.redis_url, ttl=60, negative_ttl=5), publisher, KEY,
                            projector=None, min_revision_wait=0.05, credential_throttle=DenialThrottle(60, 1000),
                            door_throttle=DenialThrottle(60, 1000))
    tasks = [asyncio.create_task(publisher.run_publisher()), asyncio.create_task(publisher.run_spiller())]
    return service, door, secret, tasks


async def unlock(service: UnlockService, door: str, secret: str, time_remaining: float):
    request = access_pb2.UnlockRequest(door_id=door, request_id=uuid.uuid4().hex,
                                       credential=access_pb2.PresentedCredential(kind=1, secret=secret))
    controller = Principal(uri=f"spiffe://latchkey/door/{door}", kind="door", name=door)
    return await service.unlock(controller, request, time_remaining)


async def stop(service: UnlockService, tasks) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await service.settled()
    await service.cache.close()
    await service.view.close()


async def test_a_granted_answer_leaves_with_its_decision_in_the_stream(urls, tmp_path):
    service, door, secret, tasks = await granted_door(urls, tmp_path, SqliteDecisionSpool(tmp_path / "s.sqlite"),
                                                      urls.nats_url)
    try:
        answer = await unlock(service, door, secret, 2.0)
        assert answer.decision == ev.DECISION_GRANTED
    finally:
        # The process dies as the answer leaves: nothing in memory survives.
        await stop(service, tasks)
    # Durable means acknowledged by the stream or, if NATS was slower than the spill age, spooled.
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        spooled = [row[0] for row in conn.execute("SELECT event_id FROM spool")]
    assert answer.decision_id in await stored_decisions(urls.nats_url, door) + spooled


async def test_no_granted_answer_when_the_decision_cannot_be_made_durable(urls, tmp_path):
    # No NATS at this address and a spool that cannot write.
    service, door, secret, tasks = await granted_door(urls, tmp_path, BrokenSpool(tmp_path / "s.sqlite"),
                                                      "nats://127.0.0.1:1")
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await unlock(service, door, secret, 0.5)
        # Within the caller's deadline (less the margin kept to answer), not after it.
        assert time.monotonic() - started < 0.5
    finally:
        await stop(service, tasks)
