"""The outbox relay starts over from its shortest wait after every relayed round.

Leading never returns, so a wait reset only on return never reset: a short NATS outage
after a long one stalled the relay for the longest wait reached before.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from latchkit import bus
from latchkit.bus import BusSettings
from services.permissions.adapters.outbox_relay import OutboxRelay, libpq_dsn
from tests.flaky_broker import FlakyBroker, resume_after_second_outage
from tests.integration.conftest import fresh_database

RESUME_LIMIT_S = 0.8
"""After the second outage ends: the waits 0.1 + 0.2 + 0.4 s at most, plus a poll; the old
relay waited out the 1.6 s it had reached in the first outage."""


class Outbox:
    """A relay on a fresh database with a fake broker; `write()` commits one outbox row."""

    def __init__(self, dsn: str, conn: psycopg.AsyncConnection) -> None:
        self.relay = OutboxRelay(dsn, BusSettings("nats://fake", 600), poll_seconds=0.02)
        self.conn = conn
        self.revisions = iter(range(1, 1_000))
        self.writes: list[asyncio.Future] = []

    def write(self) -> str:
        # A committed permissions write, as far as the relay can tell: one outbox row.
        event_id = str(uuid.uuid4())
        self.writes.append(asyncio.ensure_future(self.conn.execute(
            "INSERT INTO outbox (revision, idx, event_id, subject, payload) VALUES (%s, 0, %s, %s, %s)",
            (next(self.revisions), event_id, "latchkey.permissions.test", b"x"))))
        return event_id


@pytest.fixture
async def outbox(urls, monkeypatch):
    # The relay's bus session (latchkit.bus.session) connects through these.
    monkeypatch.setattr(bus, "connect", broker.connect)
    monkeypatch.setattr(bus, "ensure_streams", broker.ensure_streams)
    dsn = fresh_database(urls)
    conn = await psycopg.AsyncConnection.connect(libpq_dsn(dsn), autocommit=True)
    outbox = Outbox(dsn, conn)
    task = asyncio.create_task(outbox.relay.run())
    yield outbox
    task.cancel()
    await asyncio.gather(task, *outbox.writes, return_exceptions=True)
    await conn.close()


broker = FlakyBroker()


@pytest.fixture(autouse=True)
def fresh_broker():
    broker.__init__()


async def test_the_relay_resumes_quickly_after_a_second_outage(outbox):
    resumed = await resume_after_second_outage(broker, outbox.write, lambda key: key in broker.published_at)
    assert resumed < RESUME_LIMIT_S


async def test_a_broker_that_stops_acknowledging_costs_the_relay_about_a_second(outbox):
    # The broker takes the publish and never acknowledges it (what a dead connection looks like).
    broker.hung = True
    key = outbox.write()
    await asyncio.sleep(0.1)
    broker.hung = False
    started = time.monotonic()
    # The relay gives up on the ack after 1 s (it waited 5 s), reconnects and publishes again.
    while key not in broker.published_at:
        assert time.monotonic() - started < 3, "the row was not relayed after the broker answered again"
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < 1.5
