"""The unlock view on ScyllaDB: prepared once, LOCAL_QUORUM, versions as write timestamps."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from latchkit import cql
from latchkit.scylla import ScyllaSettings, connect, execute
from services.access.ports import CredentialRow, PairRow, ViewBatch

CQL_DIR = Path(__file__).resolve().parent.parent / "cql"


async def apply_schema(settings: ScyllaSettings, replication_factor: int = 3) -> list[str]:
    return await asyncio.to_thread(cql.apply_files, CQL_DIR, settings, rf=replication_factor)


class ScyllaUnlockView:
    def __init__(self, settings: ScyllaSettings) -> None:
        self.settings = settings
        self.cluster = None
        self.session = None
        self._stmts: dict = {}

    async def open(self) -> None:
        self.cluster, self.session = await asyncio.to_thread(connect, self.settings)
        ks = self.settings.keyspace
        prepare = self.session.prepare
        self._stmts = {
            "put_pair": prepare(f"UPDATE {ks}.pairs USING TIMESTAMP ? SET payload = ? "
                                "WHERE door_id = ? AND user_id = ?"),
            "get_pair": prepare(f"SELECT payload, WRITETIME(payload) FROM {ks}.pairs WHERE door_id = ? AND user_id = ?"),
            "put_cred": prepare(f"UPDATE {ks}.credentials_by_secret USING TIMESTAMP ? SET user_id = ?, revoked = ? "
                                "WHERE kind = ? AND secret_hash = ? AND credential_id = ?"),
            "get_cred": prepare(f"SELECT credential_id, user_id, revoked, WRITETIME(revoked) "
                                f"FROM {ks}.credentials_by_secret WHERE kind = ? AND secret_hash = ?"),
            "put_progress": prepare(f"UPDATE {ks}.progress USING TIMESTAMP ? SET watermark = ?, partial = ? "
                                    "WHERE id = 1"),
            "get_progress": prepare(f"SELECT watermark, partial FROM {ks}.progress WHERE id = 1"),
            "all_pairs": prepare(f"SELECT door_id, user_id, payload, WRITETIME(payload) FROM {ks}.pairs"),
        }
        for name in ("put_pair", "put_cred", "put_progress", "get_pair", "get_cred", "get_progress"):
            # Same timestamp, same value: a retried write or read can never do harm.
            self._stmts[name].is_idempotent = True

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = self.session = None

    async def apply(self, batch: ViewBatch) -> None:
        s = self._stmts
        writes = [execute(self.session, s["put_pair"], (p.version, p.payload, p.door_id, p.user_id))
                  for p in batch.pairs]
        writes += [execute(self.session, s["put_cred"], (c.version, c.user_id, c.revoked, c.kind, c.secret_hash,
                                                         c.credential_id)) for c in batch.credentials]
        await asyncio.gather(*writes)
        # The watermark only grows: it is the high part of the write timestamp (a lower
        # watermark always loses); the low 20 bits order writes at the same watermark.
        partial = json.dumps({str(k): v for k, v in batch.partial.items()})
        stamp = (batch.watermark << 20) | (time.time_ns() // 1000 & 0xFFFFF)
        await execute(self.session, s["put_progress"], (stamp, batch.watermark, partial))

    async def get_pair(self, door_id: str, user_id: str) -> PairRow | None:
        rows = await execute(self.session, self._stmts["get_pair"], (door_id, user_id))
        if not rows:
            return None
        payload, version = rows[0]
        return PairRow(door_id, user_id, version, payload or b"")

    async def get_credential(self, kind: int, secret_hash: bytes) -> CredentialRow | None:
        rows = await execute(self.session, self._stmts["get_cred"], (kind, secret_hash))
        if not rows:
            return None
        best = sorted(rows, key=lambda r: (r[2], -r[3]))[0]
        return CredentialRow(best[0], best[1], kind, secret_hash, bool(best[2]), best[3])

    async def progress(self) -> tuple[int, dict[int, tuple[int, list[int]]]]:
        rows = await execute(self.session, self._stmts["get_progress"])
        if not rows:
            return 0, {}
        watermark, partial = rows[0]
        return watermark or 0, {int(k): (v[0], list(v[1])) for k, v in json.loads(partial or "{}").items()}

    async def watermark(self) -> int:
        return (await self.progress())[0]

    async def all_pairs(self) -> list[PairRow]:
        from latchkit.scylla import pages

        result = []
        async for page in pages(self.session, self._stmts["all_pairs"]):
            result += [PairRow(r[0], r[1], r[3], r[2] or b"") for r in page]
        return result
