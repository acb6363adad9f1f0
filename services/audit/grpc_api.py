"""AuditService servicer: the AuditLog stream (history, then live) and chain verification."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from typing import cast

import grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc

from latchkit.envelope import PAYLOAD_TYPES
from latchkit.errors import InvalidArgument, ServiceError, abort, handles_errors
from services.audit.domain import AuditRecord, occurrence_key
from services.audit.ingest import Ingest
from services.audit.ports import AuditQuery, AuditStore
from services.audit.records import encode_batch, encode_response

PAGE = 256
MAX_BATCH = 1000
KNOWN_TYPES = frozenset(PAYLOAD_TYPES.values())
MAX_TS = 253402300799


def encode_cursor(seq: int) -> str:
    """A storage-order cursor: the event's seq."""
    return base64.urlsafe_b64encode(f"a1:{seq}".encode()).decode()


def encode_occurred_cursor(r: AuditRecord) -> str:
    """An occurrence-order cursor: the event's occurrence key (source time, causal rank, seq)."""
    t, rank, seq = occurrence_key(r)
    return base64.urlsafe_b64encode(f"o1:{t}:{rank}:{seq}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, tuple[int, ...]]:
    """("", ()) for no cursor, ("a1", (seq,)) or ("o1", (source_us, rank, seq))."""
    if not cursor:
        return "", ()
    try:
        kind, _, rest = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition(":")
        parts = rest.split(":")
        if (kind, len(parts)) not in (("a1", 1), ("o1", 3)) or not all(p.isdigit() and len(p) <= 20 for p in parts):
            raise ValueError
        values = tuple(int(p) for p in parts)
        if any(v >= 2**63 for v in values):
            raise ValueError
        return kind, values
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("cursor", "is not a cursor from this audit log") from None


def micros(request, field: str) -> int:
    if not request.HasField(field):
        return 0
    ts = getattr(request, field)
    if not (0 <= ts.seconds <= MAX_TS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(field, "must be a timestamp between 1970 and 9999")
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _past(end_us: int) -> bool:
    return bool(end_us) and end_us <= time.time_ns() // 1000


def parse_query(request) -> tuple[AuditQuery, tuple[str, tuple[int, ...]]]:
    for field in ("user_id", "door_id"):
        value = getattr(request, field)
        if len(value) > 64 or not value.isprintable():
            raise InvalidArgument(field, "must be at most 64 printable characters")
    if len(request.event_types) > len(KNOWN_TYPES):
        raise InvalidArgument("event_types", "too many types")
    for i, t in enumerate(request.event_types):
        if t not in KNOWN_TYPES:
            raise InvalidArgument(f"event_types[{i}]", f"unknown type; known: {', '.join(sorted(KNOWN_TYPES))}")
    start, end = micros(request, "start_time"), micros(request, "end_time")
    if start and end and end <= start:
        raise InvalidArgument("end_time", "must be after start_time")
    query = AuditQuery(request.user_id, request.door_id, tuple(request.event_types), start, end)
    return query, decode_cursor(request.cursor)


def choose_order(request, query: AuditQuery, cursor_kind: str) -> str:
    """"stored" or "occurred": what the request asks for, or what its range and cursor imply.

    A range is closed when it has an end_time and no follow still running (follow
    is ignored once end_time has passed). A cursor keeps the order it was issued in.
    """
    closed = bool(query.end_us) and (not request.follow or _past(query.end_us))
    if request.order == audit_pb2.AUDIT_ORDER_UNSPECIFIED:
        order = {"a1": "stored", "o1": "occurred"}.get(cursor_kind, "occurred" if closed else "stored")
    elif request.order == audit_pb2.AUDIT_ORDER_STORED:
        order = "stored"
    elif request.order == audit_pb2.AUDIT_ORDER_OCCURRED:
        order = "occurred"
    else:
        raise InvalidArgument("order", "is not an AuditOrder")
    if order == "occurred" and not closed:
        raise InvalidArgument("order", "occurrence order needs a closed range: an end_time, and no follow "
                                       "before that time has passed")
    if cursor_kind and cursor_kind != {"stored": "a1", "occurred": "o1"}[order]:
        issued = "storage" if cursor_kind == "a1" else "occurrence"
        raise InvalidArgument("cursor", f"was issued in {issued} order; resume in that order")
    return order


def add_to_server(servicer: AuditServicer, server) -> str:
    """Like the generated registration, but AuditLog items leave pre-serialized (see encode_response)."""
    name = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
    handlers = {
        "AuditLog": grpc.unary_stream_rpc_method_handler(
            servicer.AuditLog, request_deserializer=audit_pb2.AuditLogRequest.FromString,
            response_serializer=bytes),
        "VerifyChain": grpc.unary_unary_rpc_method_handler(
            servicer.VerifyChain, request_deserializer=audit_pb2.VerifyChainRequest.FromString,
            response_serializer=audit_pb2.VerifyChainResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    return name


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, store: AuditStore, ingest: Ingest | None) -> None:
        self.store = store
        self.ingest = ingest

    async def AuditLog(self, request, context):
        """Storage order (follow, exact resume) or, for a closed range, occurrence order (choose_order).

        In storage order the cursor is the seq, so resume and the live seam are exact.

        Each page is read only when the client has taken the previous one
        (every yield waits for flow control): a slow reader slows itself only.
        """
        try:
            query, (kind, position) = parse_query(request)
            if not 0 <= request.max_batch <= MAX_BATCH:
                raise InvalidArgument("max_batch", f"must be within 0..{MAX_BATCH}")
            batch = request.max_batch
            order = choose_order(request, query, kind)
        except ServiceError as exc:
            await abort(context, exc)
            return
        if order == "occurred":
            # An occurrence cursor has three parts (decode_cursor): the key to resume after.
            after = cast("tuple[int, int, int] | None", position or None)
            stream = self._stream_occurred(query, after, batch)
        else:
            stream = self._stream(request, query, position[0] if position else 0, batch)
        try:
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    yield item
        except ServiceError as exc:
            # The store's outage (UNAVAILABLE: retry from the last cursor), not an UNKNOWN.
            await abort(context, exc)

    async def _stream(self, request, query: AuditQuery, after: int, batch: int):
        # Follow is ignored past end_time: with an end_time already gone, the history is all.
        follow = request.follow and self.ingest is not None and not _past(query.end_us)
        while True:
            if follow:
                # Read the store's tail before reading, so nothing appended after the
                # read can be missed by the wait below.
                tail = await self.store.last_seq()
            records = await self.store.read(query, after, max(PAGE, batch))
            if batch > 1:
                for start in range(0, len(records), batch):
                    chunk = records[start:start + batch]
                    after = chunk[-1].seq
                    yield encode_batch(chunk, encode_cursor(after))
            else:
                for record in records:
                    after = record.seq
                    yield encode_response(record, encode_cursor(record.seq))
            if len(records) == max(PAGE, batch):
                continue
            if not follow:
                return
            follow = await self._await_append(tail, query.end_us)

    async def _stream_occurred(self, query: AuditQuery, after: tuple[int, int, int] | None, batch: int):
        """The closed range in occurrence order, as the store produces it (bounded, page by page)."""
        async with contextlib.aclosing(self.store.read_occurred(query, after)) as records:
            chunk: list[AuditRecord] = []
            async for record in records:
                if batch <= 1:
                    yield encode_response(record, encode_occurred_cursor(record))
                    continue
                chunk.append(record)
                if len(chunk) == batch:
                    yield encode_batch(chunk, encode_occurred_cursor(chunk[-1]))
                    chunk = []
            if chunk:
                yield encode_batch(chunk, encode_occurred_cursor(chunk[-1]))

    async def _await_append(self, tail: int, end_us: int) -> bool:
        """Wait until the store grows past `tail`; False once the clock reaches `end_us`.

        On False the caller reads once more (what was stored up to then) and ends.
        An event that happened before end_time but is stored later (a decision
        spooled at a door) is not waited for: a read without follow finds it.
        The timeout runs in this request's own task, never as a `wait_for` around
        the Condition that ingest shares.
        """
        ingest = self.ingest
        if ingest is None:  # nothing to wait on: follow needs the ingest
            return False
        remaining = None
        if end_us:
            remaining = end_us / 1_000_000 - time.time()
            if remaining <= 0:
                return False
        try:
            async with asyncio.timeout(remaining), ingest.appended:
                if await self.store.last_seq() == tail:
                    await ingest.appended.wait()
        except TimeoutError:
            return False
        return True

    @handles_errors
    async def VerifyChain(self, request, context):
        start, end = micros(request, "start_time"), micros(request, "end_time")
        if start and end and end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        checked, broken = await self.store.verify(start, end)
        response = audit_pb2.VerifyChainResponse(ok=broken is None, events_checked=checked)
        if broken is not None:
            response.first_break.CopyFrom(audit_pb2.ChainBreak(
                event_id=broken.event_id, position=broken.position,
                kind=f"CHAIN_BREAK_KIND_{broken.kind}", detail=broken.detail))
        return response
