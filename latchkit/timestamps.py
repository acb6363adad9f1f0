"""The range a google.protobuf.Timestamp may hold (years 1..9999, nanos 0..999,999,999)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

MIN_SECONDS, MAX_SECONDS = -62135596800, 253402300799


def is_valid(ts: Timestamp) -> bool:
    return MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000
