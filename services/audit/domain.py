"""Audit records and the hash chain: pure functions, no I/O, no protobuf.

Each stored event's hash covers the previous event's hash and every stored
field, so editing a row, deleting one, or swapping two breaks the chain at
that point; `verify` walks rows in storage order and names the first break.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    """Storage order; 0 until stored."""
    event_id: str
    type: str
    actor: str
    action: str
    user_id: str
    door_id: str
    credential_id: str
    outcome: str
    reason: str
    revision: int
    source_time_us: int
    stored_time_us: int
    envelope: bytes
    prev_hash: bytes = GENESIS
    hash: bytes = b""
    causal_rank: int = 0
    """Where the event falls among permission revisions (see `causal_rank`); derived from the
    envelope, so it is not part of the hash."""


def causal_rank(revision: int, view_revision: int | None) -> int:
    """The causal tie-breaker of the occurrence order: 2R for an event written by revision R,
    2R + 1 for a decision taken by a view at revision R (after R was committed, before R + 1),
    0 for an event that reflects no revision (an alarm)."""
    if view_revision is not None:
        return 2 * view_revision + 1
    return 2 * revision


def occurrence_key(r: AuditRecord) -> tuple[int, int, int]:
    """The occurrence order: when it happened at its source, then its causal rank, then storage order."""
    return r.source_time_us, r.causal_rank, r.seq


def record_hash(prev_hash: bytes, r: AuditRecord) -> bytes:
    h = hashlib.sha256(prev_hash)
    for part in (r.event_id, r.type, r.actor, r.action, r.user_id, r.door_id, r.credential_id, r.outcome,
                 r.reason, str(r.revision), str(r.source_time_us), str(r.stored_time_us)):
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    h.update(len(r.envelope).to_bytes(4, "big"))
    h.update(r.envelope)
    return h.digest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    event_id: str
    position: int
    kind: str
    """EDITED, MISSING or REORDERED."""
    detail: str


def verify(records: Iterable[AuditRecord], prev_hash: bytes, prev_seq: int) -> tuple[int, ChainBreak | None]:
    """Walk `records` (in seq order) from the link (prev_hash, prev_seq); return (checked, first break)."""
    checked = 0
    for r in records:
        checked += 1
        if record_hash(r.prev_hash, r) != r.hash:
            return checked, ChainBreak(r.event_id, r.seq, "EDITED", "the row no longer matches its hash")
        if r.prev_hash != prev_hash:
            # The link is broken: a gap in the sequence means rows are gone; no gap
            # means rows were swapped. (A jump in seq with an intact link is fine:
            # the Scylla store starts each day at day << 32.)
            if r.seq != prev_seq + 1:
                return checked, ChainBreak(r.event_id, r.seq, "MISSING",
                                           f"rows {prev_seq + 1}..{r.seq - 1} are gone")
            return checked, ChainBreak(r.event_id, r.seq, "REORDERED",
                                       "the row does not follow the previous one")
        prev_hash, prev_seq = r.hash, r.seq
    return checked, None
