"""Envelope (bus) -> AuditRecord (store) -> AuditEvent (API): every event self-explanatory."""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError
from latchkey.audit.v1 import audit_pb2
from latchkey.events.v1 import events_pb2 as ev

from latchkit.envelope import varint
from services.audit.domain import AuditRecord, causal_rank


def _subjects(env) -> tuple[str, str, str, str, str]:
    """(user_id, door_id, credential_id, outcome, reason) for any payload."""
    kind = env.WhichOneof("payload")
    p = getattr(env, kind)
    if kind == "unlock_decided":
        return (p.user_id, p.door_id, p.credential_id, ev.Decision.Name(p.decision).removeprefix("DECISION_"),
                ev.DecisionReason.Name(p.reason).removeprefix("DECISION_REASON_"))
    if kind == "security_alarm":
        return "", p.door_id, p.credential_id, "ALARM", p.kind
    user = getattr(p, "user_id", "")
    door = getattr(p, "door_id", "")
    cred = getattr(p, "credential_id", "")
    if kind == "access_changed":
        return user, door, cred, "RULES" if p.rules else "NO_RULES", ""
    deleted = getattr(p, "deleted", False) or getattr(p, "revoked", False)
    return user, door, cred, "DELETED" if deleted else "APPLIED", ""


def to_record(env, raw: bytes) -> AuditRecord:
    user, door, cred, outcome, reason = _subjects(env)
    return AuditRecord(
        seq=0, event_id=env.event_id, type=env.type, actor=env.actor, action=env.type.split(".", 1)[-1],
        user_id=user, door_id=door, credential_id=cred, outcome=outcome, reason=reason, revision=env.revision,
        source_time_us=env.occurred_at.seconds * 1_000_000 + env.occurred_at.nanos // 1000,
        stored_time_us=time.time_ns() // 1000, envelope=raw, causal_rank=rank_of(env),
    )


def rank_of(env) -> int:
    """The envelope's causal rank: its commit revision, or for a decision the view revision it reflects."""
    decided = env.unlock_decided.view_revision if env.WhichOneof("payload") == "unlock_decided" else None
    return causal_rank(env.revision, decided)


def stored_rank(envelope: bytes) -> int:
    """The causal rank of stored envelope bytes (rows stored before the rank was kept); 0 if unreadable."""
    env = ev.Envelope()
    try:
        env.ParseFromString(envelope)
    except DecodeError:  # an undecodable row ranks 0: at an equal time the storage order decides
        return 0
    return rank_of(env)


_ENVELOPE_TAG = bytes([(audit_pb2.AuditEvent.ENVELOPE_FIELD_NUMBER << 3) | 2])
_EVENT_TAG = bytes([(audit_pb2.AuditLogResponse.EVENT_FIELD_NUMBER << 3) | 2])
_CURSOR_TAG = bytes([(audit_pb2.AuditLogResponse.CURSOR_FIELD_NUMBER << 3) | 2])


_EVENTS_TAG = bytes([(audit_pb2.AuditLogResponse.EVENTS_FIELD_NUMBER << 3) | 2])


def _event_bytes(r: AuditRecord) -> bytes:
    return _header(r).SerializeToString() + _ENVELOPE_TAG + varint(len(r.envelope)) + r.envelope


def encode_batch(records: list[AuditRecord], cursor: str) -> bytes:
    """A serialized AuditLogResponse carrying `records` in `events` (max_batch > 1)."""
    parts = []
    for r in records:
        event = _event_bytes(r)
        parts += [_EVENTS_TAG, varint(len(event)), event]
    c = cursor.encode()
    return b"".join(parts) + _CURSOR_TAG + varint(len(c)) + c


def encode_response(r: AuditRecord, cursor: str) -> bytes:
    """A serialized AuditLogResponse, with the stored envelope bytes spliced in as they are.

    The streaming hot path: parsing each envelope only to serialize it again
    would cost more than the rest of the item. Protobuf accepts fields in any
    order, so the envelope field is appended after the others.
    """
    event = _event_bytes(r)
    c = cursor.encode()
    return _EVENT_TAG + varint(len(event)) + event + _CURSOR_TAG + varint(len(c)) + c


def to_event(r: AuditRecord) -> audit_pb2.AuditEvent:
    event = _header(r)
    event.envelope.ParseFromString(r.envelope)
    return event


def _header(r: AuditRecord) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        event_id=r.event_id, type=r.type, actor=r.actor, action=r.action, user_id=r.user_id, door_id=r.door_id,
        credential_id=r.credential_id, outcome=r.outcome, reason=r.reason, revision=r.revision,
        hash=r.hash, prev_hash=r.prev_hash,
    )
    event.source_time.FromMicroseconds(r.source_time_us)
    event.stored_time.FromMicroseconds(r.stored_time_us)
    return event
