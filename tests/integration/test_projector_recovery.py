"""The projector after a crash, a stall and NATS outages, on a NATS server of the test's own.

- A process killed with a batch fetched but not acknowledged: the next projector starts
  from the view's own position, so it need not wait out the consumer's ack_wait (30 s).
- A pipeline that stops making progress while the stream has work for it: the watchdog
  notices (the broker's delivered sequence does not move), logs where it was stuck, turns
  the projector unhealthy, and restarts it.
- After a NATS outage the retry wait starts again from the shortest once a round succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import nats
import pytest
from latchkey.events.v1 import events_pb2 as ev

from devstack.stack import Stack, StackPorts
from latchkit import envelope
from latchkit.bus import BusSettings, ensure_streams
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.adapters.sqlite_redis_backlog import SqliteRedisBacklog
from services.access.adapters.sqlite_view import SqliteUnlockView
from services.access.local_cache import LocalCache
from services.access.projector import Projector
from tests.waiting import until


@pytest.fixture
def own_nats(stack):
    """A NATS server of this test's own: stopping it, or its stream's content, concerns no one else."""
    own = Stack(stack.state_dir / f"nats-{uuid.uuid4().hex[:6]}", StackPorts.free())
    own.start_component("nats")
    yield own
    own.stop_component("nats")


@pytest.fixture
async def view(tmp_path):
    view = SqliteUnlockView(tmp_path / "view.sqlite")
    await view.open()
    yield view
    await view.close()


async def publish(nats_url: str, revisions: range) -> None:
    """One AccessChanged per revision, as the permissions relay publishes them."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings(url=nats_url, duplicate_window_s=600.0))
        for revision in revisions:
            changed = ev.AccessChanged(door_id="door", user_id=f"user-{revision}", door_time_zone="UTC")
            env = envelope.build(changed, actor="test", aggregate_key=f"pair/{revision}",
                                 aggregate_version=revision, revision=revision)
            await js.publish(envelope.subject(env), env.SerializeToString(), headers={"Nats-Msg-Id": env.event_id})
    finally:
        await nc.close()


def projector_for(cls, urls, nats_url: str, view, tmp_path, instance: str, **kwargs) -> Projector:
    return cls(view, RedisUnlockCache(urls.redis_url, 60, 5, instance=instance),
               BusSettings(url=nats_url, duplicate_window_s=600.0),
               SqliteRedisBacklog(tmp_path / f"backlog-{uuid.uuid4().hex[:6]}.sqlite"),
               instance=instance, **kwargs)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the cancelled projector did not end"


class HangsOnce(Projector):
    """A projector whose first store never returns: a process stuck (or killed) mid-batch,
    with the batch fetched from NATS and not acknowledged."""

    hung = None

    async def store(self, batch) -> None:
        if self.hung is None:
            self.hung = asyncio.Event()
            self.hung.set()
            await asyncio.Event().wait()
        await super().store(batch)


async def reached(projector: Projector, revision: int):
    async def check():
        return projector.watermark >= revision
    return check


async def test_a_restarted_projector_does_not_wait_out_what_the_dead_one_had_fetched(urls, own_nats, view,
                                                                                      tmp_path):
    nats_url = own_nats.urls().nats_url
    instance = f"recovery-{uuid.uuid4().hex[:6]}"
    await publish(nats_url, range(1, 4))
    # The first process applies revisions 1..3, then fetches 4..6 and dies before acknowledging them.
    first = projector_for(HangsOnce, urls, nats_url, view, tmp_path, instance)
    first.hung = asyncio.Event()  # let the first rounds through
    first_task = asyncio.create_task(first.run())
    await until(await reached(first, 3), "the first projector to apply revisions 1..3")
    first.hung = None
    await publish(nats_url, range(4, 7))

    async def fetched():
        return first.hung is not None
    await until(fetched, "the first projector to fetch revisions 4..6")
    await stop(first_task)
    # A new process, same instance and view: it reaches revision 6 well within the 30 s ack_wait.
    started = time.monotonic()
    second = projector_for(Projector, urls, nats_url, view, tmp_path, instance)
    second_task = asyncio.create_task(second.run())
    try:
        await until(await reached(second, 6), "the restarted projector to reach revision 6", limit_s=10)
        assert time.monotonic() - started < 10
        assert await view.watermark() == 6
    finally:
        await stop(second_task)


async def test_a_stalled_pipeline_is_noticed_logged_and_restarted(urls, own_nats, view, tmp_path, caplog):
    nats_url = own_nats.urls().nats_url
    await publish(nats_url, range(1, 3))
    projector = projector_for(HangsOnce, urls, nats_url, view, tmp_path, f"stall-{uuid.uuid4().hex[:6]}",
                              stall_seconds=1.0, watch_period=0.1)
    task = asyncio.create_task(projector.run())
    try:
        # Its first batch hangs: the broker shows work delivered and nothing moving.
        async def stalled():
            return not projector.healthy()
        with caplog.at_level(logging.ERROR, logger="latchkey.access.projector"):
            await until(stalled, "the watchdog to call the projector stalled", limit_s=10)
        # The log says so, with the stack of the stuck task (it hangs in `store`).
        stuck = [r for r in caplog.records if "stalled" in r.getMessage()]
        assert stuck and "in store" in stuck[0].stack
        # The pipeline is restarted; it applies everything and the projector is healthy again.
        await until(await reached(projector, 2), "the restarted pipeline to reach revision 2", limit_s=10)

        async def healthy():
            return projector.healthy()
        await until(healthy, "the projector to be healthy again", limit_s=10)
    finally:
        await stop(task)


async def failures_logged(caplog, name: str, count: int):
    async def check():
        return sum(r.getMessage().startswith(name) and "retrying" in r.getMessage() for r in caplog.records) >= count
    return check


class FlakyView(SqliteUnlockView):
    """The embedded view, failing to say where it is while `failing` is set (a store outage)."""

    failing = False

    async def progress(self):
        if self.failing:
            raise ConnectionError("the view is away")
        return await super().progress()


async def test_the_projector_retry_wait_restarts_short_after_a_successful_round(urls, own_nats, tmp_path, caplog):
    nats_url = own_nats.urls().nats_url
    view = FlakyView(tmp_path / "flaky-view.sqlite")
    await view.open()
    projector = projector_for(Projector, urls, nats_url, view, tmp_path, f"backoff-{uuid.uuid4().hex[:6]}")
    caplog.set_level(logging.WARNING, logger="latchkey.access.projector")
    view.failing = True
    task = asyncio.create_task(projector.run())
    try:
        # A long outage of the view: the wait between attempts grows (0.1, 0.2, ... 3.2 s).
        await until(await failures_logged(caplog, "projector failed", 6), "six failed attempts", limit_s=20)
        view.failing = False
        await publish(nats_url, range(1, 2))
        await until(await reached(projector, 1), "the projector to apply revision 1", limit_s=15)
        # A short NATS outage after a successful round: the first wait is the shortest again.
        caplog.clear()
        own_nats.stop_component("nats")
        await until(await failures_logged(caplog, "projector failed", 1), "the projector to notice the outage")
        own_nats.start_component("nats")
        started = time.monotonic()
        await publish(nats_url, range(2, 3))
        await until(await reached(projector, 2), "the projector to apply revision 2", limit_s=15)
        assert time.monotonic() - started < 2.5, "the projector waited out a long backoff"
    finally:
        await stop(task)
        await view.close()


class PoisonedCache(LocalCache):
    """A per-process cache that cannot apply events while `poisoned` is set (its feed then fails)."""

    poisoned = False

    def apply(self, env) -> None:
        if self.poisoned:
            raise ValueError("cannot apply this event")
        super().apply(env)


async def test_the_local_cache_feed_retry_wait_restarts_short_once_it_followed(own_nats, caplog):
    nats_url = own_nats.urls().nats_url
    cache = PoisonedCache(BusSettings(url=nats_url, duplicate_window_s=600.0), capacity=1000, ttl=60,
                          negative_ttl=5, view_watermark=lambda: 0)
    caplog.set_level(logging.WARNING, logger="latchkey.access.local_cache")
    task = asyncio.create_task(cache.run())

    async def following():
        return cache.following
    try:
        # Six feeds in a row fail on their first event: the wait between attempts grows.
        cache.poisoned = True
        for failures in range(1, 7):
            await until(following, "the feed to follow the stream", limit_s=15)
            await publish(nats_url, range(failures, failures + 1))
            await until(await failures_logged(caplog, "local cache feed failed", failures),
                        f"failure {failures} of the feed")
        cache.poisoned = False
        await until(following, "the feed to follow the stream", limit_s=15)
        await publish(nats_url, range(7, 8))

        async def applied():
            return cache.watermark >= 7
        await until(applied, "the feed to apply revision 7")
        # A NATS outage after the feed worked for a few seconds: back within a short wait.
        own_nats.stop_component("nats")
        await until(await failures_logged(caplog, "local cache feed failed", 7), "the feed to notice the outage")
        own_nats.start_component("nats")
        started = time.monotonic()
        await until(following, "the feed to follow again", limit_s=15)
        assert time.monotonic() - started < 2.5, "the feed waited out a long backoff"
    finally:
        await stop(task)
