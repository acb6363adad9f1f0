"""The sweep merge behind the CQL store's occurrence order: exact order with a bounded window."""

from __future__ import annotations

import random

from services.audit.adapters.occurrence_merge import Source, merge
from services.audit.domain import AuditRecord, occurrence_key


def rec(seq: int, t_us: int, rank: int = 0) -> AuditRecord:
    return AuditRecord(seq=seq, event_id=f"e{seq}", type="t", actor="", action="", user_id="", door_id="",
                       credential_id="", outcome="", reason="", revision=0, source_time_us=t_us, stored_time_us=0,
                       envelope=b"", causal_rank=rank)


async def run(partitions: dict[str, list[AuditRecord]], *, slice_us: int, keep: int, after=None):
    held: list[int] = []
    reads: list[str] = []

    async def read(name, resume, window) -> None:
        reads.append(name)
        for r in partitions[name]:
            if resume is None or occurrence_key(r) > resume:
                window.offer(r)
        held.append(len(window.rows()))

    sources = [Source(min(r.source_time_us for r in rows), slice_us, name) for name, rows in partitions.items()]
    out = [r async for r in merge(sources, read, after, keep)]
    return out, held, reads


async def test_partitions_in_storage_order_come_out_in_occurrence_order_with_late_rows():
    rng = random.Random(7)
    # Ten partitions of 50 rows stored in order, times near their position, some rows hours late.
    rows = [rec(seq, seq * 1_000 + (-3_600_000_000 if rng.random() < 0.03 else rng.randrange(5_000)),
                rank=rng.randrange(3)) for seq in range(1, 501)]
    partitions = {f"p{i}": rows[i * 50:(i + 1) * 50] for i in range(10)}
    out, held, reads = await run(partitions, slice_us=10_000, keep=16)
    assert [occurrence_key(r) for r in out] == sorted(occurrence_key(r) for r in rows)
    # No read holds more than `keep` rows; partitions come back for the rows they left out.
    assert max(held) <= 16 and len(reads) > len(partitions)


async def test_ties_in_time_fall_to_the_causal_rank_then_the_sequence_across_partitions():
    partitions = {"a": [rec(1, 5, rank=3), rec(2, 5, rank=1)], "b": [rec(3, 5, rank=1), rec(4, 4, rank=9)]}
    out, _, _ = await run(partitions, slice_us=1, keep=1)
    assert [r.seq for r in out] == [4, 2, 3, 1]


async def test_the_merge_resumes_strictly_after_a_key():
    partitions = {"a": [rec(s, s * 10) for s in range(1, 20)], "b": [rec(s, s * 10 - 5) for s in range(20, 30)]}
    everything, _, _ = await run(partitions, slice_us=30, keep=3)
    rest, _, _ = await run(partitions, slice_us=30, keep=3, after=occurrence_key(everything[6]))
    assert rest == everything[7:]
