"""A stopping relay finishes the round in flight: its rows are published and deleted, not cut off.

What the relay process does on SIGTERM (services/permissions/relay.py), on a real PostgreSQL
outbox and a JetStream stream of the test's own.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from latchkit.bus import BusSettings
from services.permissions.adapters.outbox_relay import OutboxRelay, libpq_dsn
from tests.integration.conftest import fresh_database
from tests.waiting import until


class RoundHeldUntilStop(OutboxRelay):
    """A relay whose round, once started, goes on only after a stop was asked for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_round = asyncio.Event()

    async def publish_round(self, conn, js) -> int:
        self.in_round.set()

        async def stop_asked() -> bool:
            return self.stopping

        await until(stop_asked, "a stop asked for while the round is in flight")
        return await super().publish_round(conn, js)


async def test_a_stop_mid_round_lets_the_round_publish_and_delete_its_rows(urls, scratch_stream):
    js, stream = scratch_stream
    dsn = fresh_database(urls)
    event_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(libpq_dsn(dsn), autocommit=True) as conn:
        # 1. A committed write, as far as the relay can tell: one outbox row.
        await conn.execute(
            "INSERT INTO outbox (revision, idx, event_id, subject, payload) VALUES (1, 0, %s, %s, %s)",
            (event_id, f"{stream.lower()}.granted", b"x"))
        relay = RoundHeldUntilStop(dsn, BusSettings(url=urls.nats_url, duplicate_window_s=600.0))
        task = asyncio.create_task(relay.run())
        try:
            # 2. The relay leads and its round has the row in hand; then it is told to stop.
            await asyncio.wait_for(relay.in_round.wait(), 20)
            await relay.stop(task, grace_s=10)
        finally:
            task.cancel()
        # 3. The round went through before the relay ended: the row is on the stream, under its
        #    event id, and gone from the outbox.
        assert task.cancelled()
        msg = await js.get_msg(stream, seq=1)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == event_id
        left = await (await conn.execute("SELECT count(*) FROM outbox")).fetchone()
        assert left == (0,)
