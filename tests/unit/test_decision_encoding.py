"""Unlock's own encoding of its decision events, and its decision ids."""

from __future__ import annotations

import uuid

from latchkey.events.v1 import events_pb2 as ev

from latchkit import envelope
from services.access import ids
from services.access.service import encode_decision


def test_the_encoded_decision_is_the_envelope_the_generic_builder_makes():
    fields = dict(decision_id="d-1", door_id="door-7", user_id="user-3", credential_id="cred-9", request_id="r-2",
                  decision=ev.DECISION_DENIED, reason=ev.DECISION_REASON_OUTSIDE_SCHEDULE, view_revision=42)
    server, latency = envelope.timestamp(), 1_250_000_000
    expected = ev.UnlockDecided(**fields, server_time=server)
    expected.decision_latency.seconds, expected.decision_latency.nanos = 1, 250_000_000
    expected.controller_time.seconds, expected.controller_time.nanos = 1_700_000_000, 5
    # The view's revision (42) is the payload's; the envelope's revision stays 0 (not a permissions event).
    built = envelope.build(expected, actor="spiffe://latchkey/door/door-7", aggregate_key="door/door-7",
                           occurred_at=server, event_id="d-1")
    encoded = encode_decision("d-1", "spiffe://latchkey/door/door-7", "door-7", "user-3", "cred-9", "r-2",
                              ev.DECISION_DENIED, ev.DECISION_REASON_OUTSIDE_SCHEDULE, 42, server.seconds,
                              server.nanos, latency, (1_700_000_000, 5))
    assert envelope.parse(encoded) == built
    assert envelope.subject(built) == envelope.decision_subject("door-7")


def test_without_controller_time_the_field_stays_absent():
    encoded = envelope.parse(encode_decision("d", "", "door", "", "", "", 1, 1, 1, 10, 0, 0, None))
    assert not encoded.unlock_decided.HasField("controller_time")
    assert encoded.unlock_decided.HasField("decision_latency")


def test_decision_ids_are_distinct_uuids_across_sequences():
    first, second = ids.Sequence(), ids.Sequence()
    made = [first.next() for _ in range(1000)] + [second.next() for _ in range(1000)]
    assert len(set(made)) == len(made)
    for value in made[:3] + made[-3:]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 8 and parsed.variant == uuid.RFC_4122


def test_a_batch_carries_the_envelopes_byte_for_byte_in_order():
    items = [encode_decision(f"d-{i}", "", "door", "", "", "", 1, 1, i, 10, 0, 0, None) for i in range(300)]
    packed = envelope.pack(items)
    assert envelope.unpack(envelope.BATCH_SUBJECT, packed) == items
    assert envelope.unpack(envelope.decision_subject("door"), items[0]) == [items[0]]
