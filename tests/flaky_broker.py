"""A NATS stand-in that can be taken down and brought back, for the retry loops' outage tests.

It answers just what the relay, the decision publisher and the audit ingest ask of a
connection: `connect`, `jetstream()`, `publish_async` (acknowledged at once), a durable
pull consumer and `close`. While it is down every call fails, on new and old connections
alike, as after a broker restart with `allow_reconnect=False`.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace


class FlakyBroker:
    def __init__(self) -> None:
        self.up = True
        self.hung = False
        """Hung: publishes are taken but never acknowledged (a broker that stopped answering)."""
        self.failures = 0
        self.published: list[tuple[str, bytes, str]] = []
        """(subject, payload, Nats-Msg-Id) of every acknowledged publish, in order."""
        self.published_at: dict[str, float] = {}
        """Nats-Msg-Id -> when it was first acknowledged (time.monotonic)."""
        self.to_deliver: list = []
        self._sequence = 0

    def _check(self) -> None:
        if not self.up:
            self.failures += 1
            raise ConnectionRefusedError("the broker is down")

    async def connect(self, settings, *, name: str, **options) -> FlakyConnection:
        self._check()
        return FlakyConnection(self)

    async def ensure_streams(self, js, settings) -> None:
        self._check()

    def deliver(self, subject: str, data: bytes) -> None:
        """Queue a message for the pull consumer (as if another service had published it)."""
        self._sequence += 1
        sequence = self._sequence

        async def ack() -> None:
            self._check()

        self.to_deliver.append(SimpleNamespace(subject=subject, data=data, ack=ack, metadata=SimpleNamespace(
            sequence=SimpleNamespace(stream=sequence))))


class FlakyConnection:
    def __init__(self, broker: FlakyBroker) -> None:
        self.broker = broker
        self.is_closed = False

    def jetstream(self) -> FlakyJetStream:
        return FlakyJetStream(self.broker)

    async def close(self) -> None:
        self.is_closed = True


class FlakyJetStream:
    def __init__(self, broker: FlakyBroker) -> None:
        self.broker = broker

    async def publish_async(self, subject: str, payload: bytes, headers: dict) -> asyncio.Future:
        self.broker._check()
        future = asyncio.get_running_loop().create_future()
        if self.broker.hung:
            return future
        msg_id = headers["Nats-Msg-Id"]
        self.broker.published.append((subject, payload, msg_id))
        self.broker.published_at.setdefault(msg_id, time.monotonic())
        future.set_result(SimpleNamespace(seq=len(self.broker.published), duplicate=False))
        return future

    async def delete_consumer(self, stream: str, durable: str) -> None:
        self.broker._check()

    async def add_consumer(self, stream: str, config) -> None:
        self.broker._check()

    async def pull_subscribe_bind(self, durable: str, stream: str) -> FlakySubscription:
        self.broker._check()
        return FlakySubscription(self.broker)


class FlakySubscription:
    def __init__(self, broker: FlakyBroker) -> None:
        self.broker = broker

    async def fetch(self, batch: int, timeout: float) -> list:  # noqa: ASYNC109 - nats-py's signature
        self.broker._check()
        if self.broker.to_deliver:
            msgs, self.broker.to_deliver = self.broker.to_deliver[:batch], self.broker.to_deliver[batch:]
            return msgs
        await asyncio.sleep(0.01)  # a short poll: the fake answers "nothing yet" quickly
        raise TimeoutError


async def _until(done, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def resume_after_second_outage(broker: FlakyBroker, work, done) -> float:
    """Two outages with work going through between them; how long after the second ended work resumed.

    `work()` starts one piece of work (publishes a row, records a decision, delivers a message)
    and returns its key; `done(key)` says whether it has gone through. The loop under test
    must be running already.
    """
    # 1. A first outage, long enough for the loop's wait to grow to 0.8 s (four failed attempts,
    #    after waits of 0.1, 0.2 and 0.4 s); without a reset the next wait would be 1.6 s.
    broker.up = False
    await _until(lambda: broker.failures >= 4, "four failed attempts", 5)
    # 2. The broker is back: work goes through, round after round, for a while.
    broker.up = True
    for _ in range(5):
        key = work()
        await _until(lambda key=key: done(key), "work after the first outage", 5)
        await asyncio.sleep(0.05)
    # 3. A short second outage, noticed by the loop while it has work to do.
    broker.up = False
    failures = broker.failures
    key = work()
    await _until(lambda: broker.failures > failures, "the second outage to be noticed", 5)
    await asyncio.sleep(0.3)
    # 4. Back again: the loop must start over from its shortest wait, not its longest.
    broker.up = True
    back = time.monotonic()
    await _until(lambda: done(key), "work after the second outage", 10)
    return time.monotonic() - back
