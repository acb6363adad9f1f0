"""Fail-closed doors: the decision's freshness rule, the bound carried in AccessChanged, the broker's proof."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace

from access_rules import codec as access_codec
from access_rules.rules import PairAccess, Reason, Rule, decide, evaluate
from services.access.freshness import PolledFreshness, caught_up

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
OPEN = (Rule("g1"),)


def test_a_fail_closed_door_opens_only_on_a_view_shown_fresh_within_its_bound():
    door = PairAccess(OPEN, door_max_view_staleness=1.0)
    assert decide(door, NOW, 0.3) == (True, Reason.GRANTED)
    assert decide(door, NOW, 1.0) == (True, Reason.GRANTED)
    # Older than the bound, never shown, or shown "in the future" (a clock stepped back): stale.
    for age in (1.01, None, -0.5):
        assert decide(door, NOW, age) == (False, Reason.STALE_VIEW), age
    # It comes before the pair's own reasons, but never turns "no rule" into something else.
    assert decide(PairAccess(OPEN, user_suspended=True, door_max_view_staleness=1.0), NOW, None) \
        == (False, Reason.STALE_VIEW)
    assert decide(PairAccess((), door_max_view_staleness=1.0), NOW, None) == (False, Reason.NO_GRANT)


def test_other_doors_ignore_the_view_age():
    assert decide(PairAccess(OPEN), NOW, None) == (True, Reason.GRANTED)
    assert decide(PairAccess(OPEN), NOW, 10_000.0) == (True, Reason.GRANTED)
    # The oracle (ExplainAccess, over PostgreSQL itself) is fresh by definition.
    assert evaluate(PairAccess(OPEN, door_max_view_staleness=1.0), NOW).granted


def test_the_bound_travels_in_access_changed():
    access = PairAccess(OPEN, time_zone="Europe/Madrid", door_max_view_staleness=1.5)
    event = access_codec.to_event("d", "u", access)
    assert event.door_max_view_staleness.ToMilliseconds() == 1500
    assert access_codec.from_event(event) == access
    # Off: the field is not set at all, so existing payloads decode as before.
    plain = access_codec.to_event("d", "u", PairAccess(OPEN))
    assert not plain.HasField("door_max_view_staleness")
    assert access_codec.from_event(plain).door_max_view_staleness == 0.0


def test_only_a_consumer_with_nothing_left_is_a_proof():
    def info(pending, ack_pending):
        return SimpleNamespace(num_pending=pending, num_ack_pending=ack_pending)

    assert caught_up(info(0, 0))
    assert not caught_up(info(3, 0))  # not delivered yet
    assert not caught_up(info(0, 2))  # delivered, not yet in the view (acknowledged after it)
    assert not caught_up(None)  # the broker did not answer: no proof


async def test_other_processes_keep_the_last_proof_they_could_read():
    answers = [100.0, RuntimeError("view down")]
    reads = []
    several = asyncio.Event()

    async def read():
        reads.append(answers[min(len(reads), len(answers) - 1)])
        if len(reads) >= 5:
            several.set()
        if isinstance(reads[-1], Exception):
            raise reads[-1]
        return reads[-1]

    polled = PolledFreshness(read, period=0)
    assert polled() is None  # nothing read yet: no proof
    task = asyncio.create_task(polled.run())
    try:
        # 1. The first read gives a proof; 2. later reads fail: the proof stays (it only ages).
        async with asyncio.timeout(5):
            await several.wait()
        assert polled() == 100.0
    finally:
        task.cancel()
