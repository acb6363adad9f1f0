"""Rebuild the unlock view and Redis from PostgreSQL, while Unlock keeps serving.

Reads one consistent snapshot of the permissions database (its revision R),
writes every pair and credential at version R, and writes a versioned
tombstone for every pair the view grants that the snapshot does not. All
writes are set-if-newer, so anything the projector applied after R stays.
"""

from __future__ import annotations

from collections.abc import Callable

from latchkit.access_codec import to_event
from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.ports import CredentialRow, PairRow, UnlockView, ViewBatch
from services.permissions import effective
from services.permissions.adapters.postgres import Database

CHUNK = 500


async def rebuild(db: Database, view: UnlockView, cache: RedisUnlockCache | None,
                  progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    async with db.read() as uow:
        await uow.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        revision = (await uow.row("SELECT revision FROM revision_counter WHERE id = 1"))["revision"]
        pairs = {(r["d"], r["u"]) for r in await uow.rows(
            "SELECT door_id::text AS d, user_id::text AS u FROM grants WHERE NOT revoked AND user_id IS NOT NULL "
            "UNION SELECT g.door_id::text, m.user_id::text FROM grants g "
            "JOIN group_members m ON m.group_id = g.group_id WHERE NOT g.revoked")}
        creds = await uow.rows("SELECT credential_id::text AS c, user_id::text AS u, kind, secret_hash, revoked "
                               "FROM credentials")
        ordered = sorted(pairs)
        total = len(ordered) + len(creds)
        done = 0
        for start in range(0, len(ordered), CHUNK):
            chunk = set(ordered[start:start + CHUNK])
            access = await effective.pair_access(uow.store, chunk)
            rows = [PairRow(d, u, revision, to_event(d, u, a).SerializeToString() if a.rules else b"")
                    for (d, u), a in access.items()]
            await _write(view, cache, ViewBatch(pairs=rows))
            done += len(rows)
            progress(done, total)
    cred_rows = [CredentialRow(c["c"], c["u"], c["kind"], bytes(c["secret_hash"]), c["revoked"], revision)
                 for c in creds]
    for start in range(0, len(cred_rows), CHUNK):
        await _write(view, cache, ViewBatch(credentials=cred_rows[start:start + CHUNK]))
        done += len(cred_rows[start:start + CHUNK])
        progress(done, total)
    stale = [PairRow(p.door_id, p.user_id, revision, b"") for p in await view.all_pairs()
             if p.payload and (p.door_id, p.user_id) not in pairs and p.version < revision]
    for start in range(0, len(stale), CHUNK):
        await _write(view, cache, ViewBatch(pairs=stale[start:start + CHUNK]))
    watermark, partial = await view.progress()
    await view.apply(ViewBatch(watermark=max(watermark, revision), partial=partial))
    return {"revision": revision, "pairs": len(ordered), "credentials": len(cred_rows), "tombstoned": len(stale)}


async def _write(view: UnlockView, cache: RedisUnlockCache | None, batch: ViewBatch) -> None:
    watermark, partial = await view.progress()
    batch.watermark, batch.partial = watermark, partial
    if cache is not None:
        await cache.write(batch.pairs, batch.credentials)
    await view.apply(batch)
