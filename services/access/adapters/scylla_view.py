"""The unlock view on ScyllaDB: prepared once, LOCAL_QUORUM, versions as write timestamps.

Every write carries USING TIMESTAMP, so replicas resolve concurrent and
replayed writes by themselves, with no read before write and no LWT:

- `pairs`, `credentials_by_secret`: timestamp (version << 1) | deny. The
  higher version wins; at an equal version the revoke (empty payload, revoked
  credential) wins, and between two grants CQL keeps the greater value, the
  same rule as the embedded view. WRITETIME >> 1 is the version.
- `progress_by_instance`: timestamp = the revision a write is about (see
  cql/002_progress_by_instance.cql), so the watermark only grows and the
  partial revisions only gain indices.
- `freshness_by_instance`: timestamp = the proof's time in microseconds, so
  the newest proof wins.

Rows are read page by page through `latchkit.scylla.pages`; nothing iterates
a ResultSet (that would fetch the next page synchronously, on the event loop).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from latchkit import scylla as cql
from latchkit.scylla import ScyllaSettings, connect, execute, pages
from services.access.ports import CredentialRow, PairRow, ViewBatch

CQL_DIR = Path(__file__).resolve().parent.parent / "cql"
MAX_VERSION = (1 << 62) - 1
"""(version << 1) | 1 must fit a signed 64-bit timestamp. Versions are permissions revisions (one per
committed transaction): a million a second would take about 146,000 years to get there."""


async def apply_schema(settings: ScyllaSettings, replication_factor: int = 3) -> list[str]:
    return await asyncio.to_thread(cql.apply_files, CQL_DIR, settings, rf=replication_factor)


def stamp(version: int, deny: bool) -> int:
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version {version} outside 0..2^62-1")
    return (version << 1) | int(deny)


ROWS_PER_BATCH = 32


def _unlogged(writes: list) -> list:
    """The row writes as UNLOGGED batches of ROWS_PER_BATCH, sent concurrently.

    Not for atomicity: each row carries its own version timestamp, so rows may land
    in any order and a retry changes nothing. On a small client the driver's cost per
    request, not the cluster, bounds the projector: one request per 32 rows instead of one each.
    """
    from cassandra.query import BatchStatement, BatchType

    batches = []
    for i in range(0, len(writes), ROWS_PER_BATCH):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for statement, params in writes[i:i + ROWS_PER_BATCH]:
            batch.add(statement, params)
        batch.is_idempotent = True
        batches.append(batch)
    return batches


class ScyllaUnlockView:
    def __init__(self, settings: ScyllaSettings, instance: str = "local") -> None:
        self.settings = settings
        self.instance = instance
        """Whose progress this view records and reads (LATCHKEY_ACCESS_INSTANCE); the rows are shared."""
        # The driver's Cluster and Session once open (the driver has no type hints).
        self.cluster: Any = None
        self.session: Any = None
        self._stmts: dict = {}
        self._sent: dict[int, set[int]] = {}  # partial indices already written, so each round sends only news
        self._cleared = 0  # finished revisions up to here are already range-deleted

    async def open(self) -> None:
        self.cluster, self.session = await asyncio.to_thread(connect, self.settings)
        ks = self.settings.keyspace
        cqls = {
            "put_pair": f"UPDATE {ks}.pairs USING TIMESTAMP ? SET payload = ? WHERE door_id = ? AND user_id = ?",
            "get_pair": f"SELECT payload, WRITETIME(payload) FROM {ks}.pairs WHERE door_id = ? AND user_id = ?",
            "put_cred": f"UPDATE {ks}.credentials_by_secret USING TIMESTAMP ? SET user_id = ?, revoked = ? "
                        "WHERE kind = ? AND secret_hash = ? AND credential_id = ?",
            "get_cred": f"SELECT credential_id, user_id, revoked, WRITETIME(revoked) "
                        f"FROM {ks}.credentials_by_secret WHERE kind = ? AND secret_hash = ?",
            "put_watermark": f"UPDATE {ks}.progress_by_instance USING TIMESTAMP ? SET watermark = ? "
                             "WHERE instance = ?",
            "put_partial": f"UPDATE {ks}.progress_by_instance USING TIMESTAMP ? SET total = ?, seen = seen + ? "
                           "WHERE instance = ? AND revision = ?",
            "clear_partial": f"DELETE FROM {ks}.progress_by_instance USING TIMESTAMP ? "
                             "WHERE instance = ? AND revision <= ?",
            "get_progress": f"SELECT watermark, revision, total, seen FROM {ks}.progress_by_instance "
                            "WHERE instance = ?",
            "get_watermark": f"SELECT watermark FROM {ks}.progress_by_instance WHERE instance = ? LIMIT 1",
            "get_legacy_progress": f"SELECT watermark, partial FROM {ks}.progress WHERE id = 1",
            "all_pairs": f"SELECT door_id, user_id, payload, WRITETIME(payload) FROM {ks}.pairs",
            "put_fresh": f"UPDATE {ks}.freshness_by_instance USING TIMESTAMP ? SET fresh_at = ? WHERE instance = ?",
            "get_fresh": f"SELECT fresh_at FROM {ks}.freshness_by_instance WHERE instance = ?",
        }
        prepared = await asyncio.gather(*(asyncio.to_thread(self.session.prepare, text) for text in cqls.values()))
        self._stmts = dict(zip(cqls, prepared, strict=True))
        for statement in self._stmts.values():
            # Every write carries its own timestamp and a set add is a union: a retried
            # statement (read or write) lands exactly as the first attempt would have.
            statement.is_idempotent = True

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None

    async def apply(self, batch: ViewBatch) -> None:
        s = self._stmts
        # Every timestamp first: a version out of range fails the batch before anything is sent.
        writes: list[tuple[Any, tuple[object, ...]]] = [(s["put_pair"], (stamp(p.version, not p.payload), p.payload, p.door_id, p.user_id))
                  for p in batch.pairs]
        writes += [(s["put_cred"], (stamp(c.version, c.revoked), c.user_id, c.revoked, c.kind, c.secret_hash,
                                    c.credential_id)) for c in batch.credentials]
        await asyncio.gather(*(execute(self.session, statement, None) for statement in _unlogged(writes)))
        await self._record_progress(batch)

    async def _record_progress(self, batch: ViewBatch) -> None:
        """After the rows: progress never claims a row that is not written yet."""
        from cassandra.query import BatchStatement, BatchType

        s = self._stmts
        # One partition: an unlogged batch of it is applied atomically, and without the batch log.
        progress = BatchStatement(batch_type=BatchType.UNLOGGED)
        progress.is_idempotent = True
        progress.add(s["put_watermark"], (batch.watermark, batch.watermark, self.instance))
        news = {}
        for revision, (total, seen) in batch.partial.items():
            new = set(seen) - self._sent.get(revision, set())
            if revision > batch.watermark and new:
                news[revision] = new
                progress.add(s["put_partial"], (revision, total, new, self.instance, revision))
        if batch.watermark > self._cleared:
            progress.add(s["clear_partial"], (batch.watermark, self.instance, batch.watermark))
        await execute(self.session, progress)
        for revision, new in news.items():
            self._sent.setdefault(revision, set()).update(new)
        self._cleared = max(self._cleared, batch.watermark)
        self._sent = {r: seen for r, seen in self._sent.items() if r > self._cleared}

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None:
        rows = await execute(self.session, self._stmts["get_pair"], (door_id, user_id))
        if not rows:
            return None
        payload, written = rows[0]
        return PairRow(door_id, user_id, written >> 1, payload or b"")

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        rows = await execute(self.session, self._stmts["get_cred"], (kind, secret_hash))
        if not rows:
            return None
        best = max(rows, key=lambda r: (not r[2], r[3] >> 1, r[0]))
        return CredentialRow(best[0], best[1], kind, secret_hash, bool(best[2]), best[3] >> 1)

    async def progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]:
        rows = await execute(self.session, self._stmts["get_progress"], (self.instance,))
        if not rows:
            return await self._legacy_progress()
        watermark = rows[0][0] or 0
        # A revision at or below the watermark may be read before its range delete lands: it is finished.
        return watermark, {r[1]: (r[2], sorted(r[3] or ())) for r in rows if r[1] is not None and r[1] > watermark}

    async def _legacy_progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]:
        """The single progress row shared by every instance before progress was kept per instance."""
        rows = await execute(self.session, self._stmts["get_legacy_progress"])
        if not rows:
            return 0, {}
        watermark, partial = rows[0]
        return watermark or 0, {int(k): (v[0], sorted(v[1])) for k, v in json.loads(partial or "{}").items()}

    async def watermark(self) -> int:
        """Polled by the worker processes: the static cell alone, not the partial revisions."""
        rows = await execute(self.session, self._stmts["get_watermark"], (self.instance,))
        return (rows[0][0] or 0) if rows else (await self._legacy_progress())[0]

    async def all_pairs(self) -> list[PairRow]:
        result = []
        async for page in pages(self.session, self._stmts["all_pairs"]):
            result += [PairRow(r[0], r[1], r[3] >> 1, r[2] or b"") for r in page]
        return result

    async def record_fresh(self, at: float) -> None:
        await execute(self.session, self._stmts["put_fresh"], (round(at * 1_000_000), at, self.instance))

    async def fresh_at(self) -> float | None:
        rows = await execute(self.session, self._stmts["get_fresh"], (self.instance,))
        return rows[0][0] if rows else None
