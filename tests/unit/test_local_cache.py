"""The per-process cache's rules, without I/O: events win, fills are kept only when safe."""

from __future__ import annotations

from latchkey.events.v1 import events_pb2 as ev

from latchkit import envelope
from latchkit.bus import BusSettings
from services.access.local_cache import MISS, LocalCache
from services.access.ports import PairRow

BUS = BusSettings(url="nats://unused", duplicate_window_s=600.0)


def cache(view_watermark: list[int], capacity: int = 1000) -> LocalCache:
    return LocalCache(BUS, capacity=capacity, ttl=60, negative_ttl=5, view_watermark=lambda: view_watermark[0])


def access_event(revision: int, door: str, user: str, granted: bool, index: int = 0, count: int = 1):
    rules = [ev.AccessRule(grant_id="g")] if granted else []
    return envelope.build(ev.AccessChanged(door_id=door, user_id=user, rules=rules), actor="test",
                          aggregate_key=f"access/{door}/{user}", aggregate_version=revision, revision=revision,
                          revision_event_index=index, revision_event_count=count)


def test_nothing_is_served_or_kept_before_the_feed_is_live():
    c = cache([0])
    assert not c.serving()
    assert c.fill_ticket() is None
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 1, b"x"))
    assert c.pair("d", "u") is MISS


def test_an_event_beats_a_racing_fill_even_for_a_key_nobody_had_read():
    c = cache([5])
    c.start(floor=5)
    ticket = c.fill_ticket()  # a fill starts: it will read version 5 (granted) from Redis
    c.apply(access_event(6, "d", "u", granted=False))  # meanwhile the revoke arrives
    c.fill_pair(ticket, "d", "u", PairRow("d", "u", 5, b"granted"))
    assert c.pair("d", "u") is None
    assert c.watermark == 6


def test_a_fill_is_kept_only_if_the_view_had_reached_the_feeds_floor():
    view = [3]
    c = cache(view)
    c.start(floor=5)  # revisions 4 and 5 were published before the feed began: it will never see them
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 2, b"old"))
    assert c.pair("d", "u") is MISS
    view[0] = 5
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 5, b"new"))
    assert c.pair("d", "u").payload == b"new"


def test_it_serves_only_while_it_has_everything_the_view_has():
    view = [5]
    c = cache(view)
    c.start(floor=5)
    assert c.serving()
    view[0] = 6  # the projector applied revision 6; this feed has not yet
    assert not c.serving()
    c.apply(access_event(6, "d", "u", granted=True, index=0, count=2))
    assert not c.serving()  # half a revision is not revision 6
    c.apply(access_event(6, "d", "v", granted=True, index=1, count=2))
    assert c.serving() and c.watermark == 6


def test_clearing_raises_the_floor_to_what_the_feed_had_seen():
    view = [5]
    c = cache(view, capacity=2)
    c.start(floor=5)
    ticket = c.fill_ticket()
    c.apply(access_event(6, "d", "a", granted=False))
    c.apply(access_event(7, "d", "b", granted=False))
    c.apply(access_event(8, "d", "c", granted=False))  # the third entry overflows: everything goes
    assert c.pair("d", "a") is MISS and c.floor == 8
    # The fill that began before the clear is dropped (its epoch is gone), and so is a
    # new one while the view is still below what the forgotten events said.
    c.fill_pair(ticket, "d", "a", PairRow("d", "a", 4, b"granted"))
    view[0] = 7
    c.fill_pair(c.fill_ticket(), "d", "a", PairRow("d", "a", 4, b"granted"))
    assert c.pair("d", "a") is MISS
    view[0] = 8
    c.fill_pair(c.fill_ticket(), "d", "a", PairRow("d", "a", 6, b""))
    assert c.pair("d", "a").payload == b""


def test_filled_entries_expire_and_a_stopped_feed_forgets_everything():
    c = LocalCache(BUS, capacity=10, ttl=0, negative_ttl=0, view_watermark=lambda: 0)
    c.start(floor=0)
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 1, b"x"))
    assert c.pair("d", "u") is MISS  # expired at once with a zero TTL
    c.apply(access_event(1, "d", "u", granted=True))
    assert c.pair("d", "u") is not MISS  # an event's entry does not expire
    c.stop()
    assert not c.serving() and c.pair("d", "u") is MISS


def test_it_answers_at_its_revision_only_once_the_view_has_reached_its_floor():
    view = [3]
    c = cache(view)
    c.start(floor=5)
    assert c.serving() and not c.answers_at(0)  # a miss would read a view older than the floor
    view[0] = 5
    assert c.answers_at(5) and not c.answers_at(6)


def test_an_expired_entry_is_renewed_but_never_replaced_by_an_older_version():
    c = LocalCache(BUS, capacity=10, ttl=0, negative_ttl=0, view_watermark=lambda: 0)
    c.start(floor=0)
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 6, b""))  # revoked at 6; expires at once
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 5, b"granted"))
    assert c._pairs[("d", "u")][0] == 6
    c.ttl = c.negative_ttl = 60
    c.fill_pair(c.fill_ticket(), "d", "u", PairRow("d", "u", 6, b""))
    assert c.pair("d", "u").version == 6
