"""Building and reading the bus envelope (`latchkey.events.v1.Envelope`)."""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from latchkey.events.v1 import events_pb2

from latchkit.bus import DECISIONS_SUBJECT_PREFIX, PERMISSIONS_SUBJECT_PREFIX

# Envelope type <-> payload field. The type is what subjects and audit filters use.
PAYLOAD_TYPES = {
    "access_changed": "permissions.access_changed",
    "credential_changed": "permissions.credential_changed",
    "user_changed": "permissions.user_changed",
    "door_changed": "permissions.door_changed",
    "group_changed": "permissions.group_changed",
    "group_membership_changed": "permissions.group_membership_changed",
    "schedule_changed": "permissions.schedule_changed",
    "grant_changed": "permissions.grant_changed",
    "unlock_decided": "access.unlock_decided",
    "security_alarm": "access.security_alarm",
}


def timestamp(when: dt.datetime | Timestamp | None = None) -> Timestamp:
    if isinstance(when, Timestamp):
        return when
    if when is None:
        ns = time.time_ns()
        return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def build(
    payload,
    *,
    actor: str,
    aggregate_key: str,
    aggregate_version: int = 0,
    revision: int = 0,
    revision_event_index: int = 0,
    revision_event_count: int = 1,
    occurred_at: dt.datetime | Timestamp | None = None,
    event_id: str | None = None,
) -> events_pb2.Envelope:
    """Wrap a payload message (e.g. `AccessChanged`) in a new envelope with a fresh UUID."""
    field = _field_for(payload)
    envelope = events_pb2.Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=PAYLOAD_TYPES[field],
        occurred_at=timestamp(occurred_at),
        actor=actor,
        revision=revision,
        revision_event_index=revision_event_index,
        revision_event_count=revision_event_count,
        aggregate_key=aggregate_key,
        aggregate_version=aggregate_version,
    )
    getattr(envelope, field).CopyFrom(payload)
    return envelope


def _field_for(payload) -> str:
    return _field_named(payload.DESCRIPTOR.name)


@functools.cache
def _field_named(name: str) -> str:
    for field in events_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields:
        if field.message_type is not None and field.message_type.name == name:
            return field.name
    raise ValueError(f"{name} is not an envelope payload")


def subject(envelope: events_pb2.Envelope) -> str:
    """`latchkey.permissions.<type suffix>` or `latchkey.decisions.<door id>`."""
    kind = envelope.WhichOneof("payload")
    if kind in ("unlock_decided", "security_alarm"):
        return decision_subject(getattr(envelope, kind).door_id)
    return PERMISSIONS_SUBJECT_PREFIX + envelope.type.split(".", 1)[1]


@functools.lru_cache(maxsize=65536)
def decision_subject(door_id: str) -> str:
    """`latchkey.decisions.<door id as a subject token>`."""
    return DECISIONS_SUBJECT_PREFIX + _token(door_id or "_")


def _token(value: str) -> str:
    """NATS subject tokens may not contain '.', '*', '>' or whitespace."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in value) or "_"


BATCH_SUBJECT = DECISIONS_SUBJECT_PREFIX + "batch"


def varint(n: int) -> bytes:
    """A protobuf base-128 varint (length prefixes when writing messages by hand)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pack(serialized: list[bytes]) -> bytes:
    """An `EnvelopeBatch` of already serialized envelopes, without parsing them again."""
    # A repeated bytes field takes the items as they are: upb writes tag, length and bytes
    # in C, about 5x faster than joining them here (the bytes are the same).
    return events_pb2.EnvelopeBatch(envelopes=serialized).SerializeToString()


def unpack(subject_: str, data: bytes) -> list[bytes]:
    """The serialized envelopes a message on `subject_` carries: itself, or a batch's items.

    ValueError if a message on the batch subject is not an `EnvelopeBatch`.
    """
    if subject_ != BATCH_SUBJECT:
        return [data]
    try:
        return list(events_pb2.EnvelopeBatch.FromString(data).envelopes)
    except DecodeError as exc:
        raise ValueError(f"not an EnvelopeBatch: {exc}") from exc


def parse(data: bytes) -> events_pb2.Envelope:
    """Decode an envelope; raises ValueError for bytes that are not one."""
    envelope = events_pb2.Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not an Envelope: {exc}") from exc
    if not envelope.event_id or not envelope.type or envelope.WhichOneof("payload") is None:
        raise ValueError("envelope lacks event_id, type or payload")
    return envelope
