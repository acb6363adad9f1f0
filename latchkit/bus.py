"""NATS JetStream: connection, and the streams all services agree on.

Two streams, both file-backed:
- PERMISSIONS (`latchkey.permissions.<event type>`): the outbox relay's output,
  consumed by the access projector and the audit ingest.
- DECISIONS (`latchkey.decisions.<door id>`, or `latchkey.decisions.batch` for
  an `EnvelopeBatch` of several): unlock decisions from the access service,
  consumed by audit (`envelope.unpack` reads both).

`Nats-Msg-Id` is the envelope's event id, so the broker drops a re-publish
inside `duplicate_window`; past it, consumers are idempotent by event id or
aggregate version anyway.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from latchkit import tracing
from latchkit.settings import env_float, env_str

log = logging.getLogger("latchkit.bus")

PERMISSIONS_STREAM = "PERMISSIONS"
PERMISSIONS_SUBJECT_PREFIX = "latchkey.permissions."
DECISIONS_STREAM = "DECISIONS"
DECISIONS_SUBJECT_PREFIX = "latchkey.decisions."


@dataclass(frozen=True)
class BusSettings:
    url: str
    duplicate_window_s: float
    replicas: int = 1

    @classmethod
    def from_env(cls) -> BusSettings:
        return cls(
            url=env_str("LATCHKEY_NATS_URL", "nats://127.0.0.1:24222"),
            duplicate_window_s=env_float("LATCHKEY_NATS_DUPLICATE_WINDOW_SECONDS", 600.0),
            replicas=int(env_float("LATCHKEY_NATS_REPLICAS", 1)),
        )


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    common: dict[str, Any] = dict(
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.replicas,
    )
    return [
        StreamConfig(name=PERMISSIONS_STREAM, subjects=[PERMISSIONS_SUBJECT_PREFIX + ">"], **common),
        StreamConfig(name=DECISIONS_STREAM, subjects=[DECISIONS_SUBJECT_PREFIX + ">"], **common),
    ]


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and a library swallowed the cancellation.

    Python 3.11's `asyncio.wait_for` returns the result instead of raising when
    what it awaited finished in the same loop turn as the cancel (gh-86296).
    nats-py awaits every request that way, so a cancelled feed could carry on,
    e.g. into a wait that never ends, and keep a shutdown waiting. The loops
    that live as long as the process call this on each turn and before each
    long wait (`Puller.next` does). Not for clean-up code that runs after a
    cancel on purpose (it would stop there).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_closed_on_purpose: weakref.WeakSet = weakref.WeakSet()
_shutting_down = False


def shutting_down() -> None:
    """The process is stopping: from now on a lost connection is expected, not news.

    A normal stop closes every connection (and a Ctrl-C in a terminal may stop the
    broker as well), so each would otherwise log a "nats disconnected" warning.
    """
    global _shutting_down
    _shutting_down = True


async def connect(settings: BusSettings, *, name: str, **options) -> nats.NATS:
    """Connect with endless reconnects: a broker outage is waited out, never fatal."""
    client: list[nats.NATS] = []

    def level() -> int:
        # Our own `close` (nats-py reports it as a disconnect) or a stopping process: debug.
        expected = _shutting_down or (client and client[0] in _closed_on_purpose)
        return logging.DEBUG if expected else logging.WARNING

    async def on_disconnect() -> None:
        log.log(level(), "nats disconnected", extra={"client": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"client": name})

    async def on_error(exc: Exception) -> None:
        log.log(level(), "nats error", extra={"client": name, "error": repr(exc)})

    nc = await nats.connect(
        settings.url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        **options,
    )
    client.append(nc)
    return nc


_closing: set[asyncio.Task] = set()


async def close(nc: nats.NATS, limit_s: float = 2.0) -> None:
    """Close a connection without ever hanging the caller (a shutdown, a retry loop).

    nats-py's close flushes and drains the socket first; on a connection that a
    broker restart left half-dead it can wait forever, and it does not always
    give up when cancelled (a fresh-clone CI run hung in a test teardown after a
    NATS outage test, waiting for it). So the close runs as a task of its own
    that the caller waits for at most `limit_s` and never cancels: past that it
    finishes, or not, on its own.
    """
    if nc.is_closed:
        return
    _closed_on_purpose.add(nc)
    task = asyncio.ensure_future(nc.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    if not done:
        log.warning("nats connection did not close within the limit; left closing in the background")
    elif not task.cancelled() and task.exception() is not None:
        log.warning("nats connection did not close cleanly", extra={"error": repr(task.exception())})


async def ensure_streams(js, settings: BusSettings) -> None:
    """Create each stream, or update it to this config (nats-py never does that by itself)."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)


@asynccontextmanager
async def session(settings: BusSettings, *, name: str, **options) -> AsyncIterator[tuple[nats.NATS, Any]]:
    """`(nc, js)` with the streams ensured, for one attempt of a loop run by `retry.retry_forever`.

    No reconnects: a lost connection ends the attempt, and the loop's backoff
    (one outage policy, latchkit/retry.py) starts the next one. The connection
    is closed within a bounded time however the attempt ends.
    """
    nc = await connect(settings, name=name, allow_reconnect=False, **options)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        yield nc, js
    finally:
        await close(nc)


async def fresh_pull_consumer(js, stream: str, config: ConsumerConfig):
    """A pull subscription on a durable consumer created anew from `config`.

    Re-created at every attempt at the consumer's own start position: what a dead
    process had fetched and not acknowledged comes again at once, instead of after
    `ack_wait` (a durable consumer reused as it was would keep that hole).
    """
    with suppress(NotFoundError):
        await js.delete_consumer(stream, config.durable_name)
    await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(config.durable_name, stream=stream)


async def consume(puller: Puller, handle: Callable[[list], Awaitable[None]], backoff: Any,
                  beat: Callable[[], None] | None = None) -> None:
    """Fetch and handle batches until a failure ends the attempt.

    The backoff is reset after every batch handled and after every idle fetch
    (the broker answered), never before `handle`: a store that keeps failing
    backs off. `beat` (optional) is called before every fetch (a stall check).
    """
    while True:
        if beat is not None:
            beat()
        try:
            msgs = await puller.next()
        except TimeoutError:
            backoff.reset()
            continue
        await handle(msgs)
        backoff.reset()


async def acked_in_order(sent: Sequence[tuple[asyncio.Future, int]],
                         limit_s: float) -> tuple[int, Exception | None]:
    """Await the acks of pipelined publishes (`(ack future, weight)` in the order sent) under one
    timer; returns the weight of the acknowledged prefix and the first failure (None if none).

    JetStream stores a connection's publishes in the order sent, so an acknowledged
    prefix is exactly what may be forgotten (deleted, marked sent). At the first
    failure the rest are cancelled, whatever their own fate: acknowledging out of
    order would lose the order on the retry.
    """
    acked = 0
    try:
        async with asyncio.timeout(limit_s):
            for future, weight in sent:
                await future
                acked += weight
    except Exception as exc:  # keep order: stop at the first failure, whatever it is
        for future, _ in sent:
            future.cancel()  # a no-op on those already acknowledged
        return acked, exc
    return acked, None


class Puller:
    """Fetches from a JetStream pull subscription: batches while busy, one long poll while idle.

    Busy: `fetch(batch, busy_wait)`; the short deadline matters because nats-py
    holds a partial batch until it. Idle (the last fetch found nothing): a long
    poll for one message, which returns the moment one arrives, instead of an
    empty pull every `busy_wait` (at 20 ms that kept an idle process at 5% of a
    core). `next()` raises TimeoutError when nothing came.
    """

    def __init__(self, sub, batch: int, busy_wait: float, idle_wait: float = 5.0) -> None:
        self.sub = sub
        self.batch = batch
        self.busy_wait = busy_wait
        self.idle_wait = idle_wait
        self.idle = False

    async def next(self) -> list:
        raise_if_cancelled()
        try:
            if self.idle:
                msgs = await self.sub.fetch(1, timeout=self.idle_wait)
            else:
                msgs = await self.sub.fetch(self.batch, timeout=self.busy_wait)
        except TimeoutError:
            self.idle = True
            raise
        self.idle = False
        return msgs


def inject_headers(headers: dict | None = None) -> dict | None:
    """`headers` for a publish, with the current trace's `traceparent` added when tracing is on.

    Off, `headers` come back as they are (None stays None): no work on the publish path.
    """
    if not tracing.ENABLED:
        return headers
    return tracing.inject(dict(headers) if headers else {})


def extract_context(headers: dict | None):
    """The trace context a received message's headers carry (None when tracing is off)."""
    if not tracing.ENABLED:
        return None
    return tracing.extract(headers)


@contextmanager
def publish_span(subject: str, headers: dict | None = None, *, traceparent: str | None = None,
                 links: tuple = ()) -> Iterator[dict | None]:
    """A producer span around one publish; yields the headers to publish with (its traceparent added).

        with bus.publish_span(subject, {"Nats-Msg-Id": event_id}) as headers:
            await js.publish(subject, data, headers=headers)

    The span is a child of the current span, or of `traceparent` when given (a W3C
    traceparent kept with the event, e.g. in an outbox row written by another task);
    `links` (span links, `tracing.link_to`) name other traces it carries (a batch).
    """
    if not tracing.ENABLED:
        yield headers
        return
    parent = tracing.extract({"traceparent": traceparent}) if traceparent else None
    with tracing.span(f"{subject} publish", kind="PRODUCER", parent=parent, links=links,
                      attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                                  "messaging.operation.type": "publish"}):
        yield tracing.inject(dict(headers) if headers else {})


@contextmanager
def consumer_span(name: str, msg) -> Iterator[object | None]:
    """A consumer span for one received message, child of the trace its headers carry.

    Yields the span (None when tracing is off); code inside it (a publish, a
    store write) runs in that trace.
    """
    if not tracing.ENABLED:
        yield None
        return
    parent = tracing.extract(getattr(msg, "headers", None))
    attributes = {"messaging.system": "nats", "messaging.destination.name": msg.subject,
                  "messaging.operation.type": "process"}
    metadata = _metadata(msg)
    if metadata is not None:
        attributes["messaging.nats.stream_sequence"] = metadata.sequence.stream
    with tracing.span(name, kind="CONSUMER", parent=parent, attributes=attributes) as span:
        yield span


@contextmanager
def consumer_batch_span(name: str, msgs: list) -> Iterator[object | None]:
    """A consumer span for a fetched batch: child of the one message's trace, or linked to each of several.

    A batch handled as one unit (one store write, one ack) is one span; with
    several messages it cannot have several parents, so it links to each trace.
    """
    if not tracing.ENABLED:
        yield None
        return
    if len(msgs) == 1:
        with consumer_span(name, msgs[0]) as span:
            yield span
        return
    links = [link for link in (tracing.link_to(tracing.extract(getattr(m, "headers", None))) for m in msgs)
             if link is not None]
    attributes = {"messaging.system": "nats", "messaging.operation.type": "process",
                  "messaging.batch.message_count": len(msgs)}
    if msgs:
        attributes["messaging.destination.name"] = msgs[0].subject
    with tracing.span(name, kind="CONSUMER", links=links, attributes=attributes) as span:
        yield span


def _metadata(msg):
    """JetStream metadata of a message, or None for a core NATS message."""
    try:
        return msg.metadata
    except Exception:  # nats-py raises its own error for a reply subject it cannot parse
        return None


async def stream_tail_revision(js, stream: str = PERMISSIONS_STREAM) -> int:
    """The revision of the newest message in `stream` (0 when it holds none).

    The relay publishes in revision order, so this is the highest revision the
    bus has been given.
    """
    from latchkey.events.v1 import events_pb2

    info = await js.stream_info(stream)
    if not info.state.messages or not info.state.last_seq:
        return 0
    msg = await js.get_msg(stream, seq=info.state.last_seq)
    return events_pb2.Envelope.FromString(msg.data).revision


async def purge_streams(url: str) -> None:
    """Empty the PERMISSIONS and DECISIONS streams (creating them if missing): for tests and benchmarks
    that must start from revision 1 on a shared broker, never for a running system."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings(url=url, duplicate_window_s=600.0))
        for stream in (PERMISSIONS_STREAM, DECISIONS_STREAM):
            await js.purge_stream(stream)
    finally:
        await nc.close()
