"""Rebuild the unlock view and Redis from what the permissions service exports, while Unlock keeps serving.

Reads the permissions service's access snapshot (`ExportAccessSnapshot`: one
consistent state, its revision R), writes every pair and credential at
version R, and writes a versioned tombstone for every pair the view grants
that the snapshot does not. All writes are set-if-newer, so anything the
projector applied after R stays. The permissions service owns its tables:
this module only speaks its gRPC contract.
"""

from __future__ import annotations

from collections.abc import Callable

from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from services.access.adapters.redis_cache import RedisUnlockCache
from services.access.ports import CredentialRow, PairRow, UnlockView, ViewBatch

CHUNK = 500


class IncompleteSnapshot(Exception):
    """The stream ended without everything it announced: nothing is tombstoned from it."""


async def rebuild(permissions: permissions_pb2_grpc.PermissionsServiceStub, view: UnlockView,
                  cache: RedisUnlockCache | None,
                  progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    revision: int | None = None
    pairs: set[tuple[str, str]] = set()
    credentials = done = pairs_total = credentials_total = 0
    async for message in permissions.ExportAccessSnapshot(pm.ExportAccessSnapshotRequest()):
        if revision is None:
            revision = message.revision
        elif message.revision != revision:
            raise IncompleteSnapshot(f"the snapshot moved from revision {revision} to {message.revision}")
        pairs_total, credentials_total = message.pairs_total, message.credentials_total
        rows = [PairRow(p.door_id, p.user_id, revision,
                        p.access.SerializeToString() if p.access.rules else b"") for p in message.pairs]
        creds = [CredentialRow(c.credential_id, c.user_id, c.kind, c.secret_hash, c.revoked, revision)
                 for c in message.credentials]
        if rows or creds:
            await _write(view, cache, ViewBatch(pairs=rows, credentials=creds))
        pairs.update((p.door_id, p.user_id) for p in rows)
        credentials += len(creds)
        done += len(rows) + len(creds)
        progress(done, pairs_total + credentials_total)
    # A stream that ends short must not close the pairs it merely did not carry.
    if revision is None:
        raise IncompleteSnapshot("the permissions service sent no snapshot")
    if (len(pairs), credentials) != (pairs_total, credentials_total):
        raise IncompleteSnapshot(f"received {len(pairs)} pairs and {credentials} credentials of the "
                                 f"{pairs_total} and {credentials_total} announced")
    stale = [PairRow(p.door_id, p.user_id, revision, b"") for p in await view.all_pairs()
             if p.payload and (p.door_id, p.user_id) not in pairs and p.version < revision]
    for start in range(0, len(stale), CHUNK):
        await _write(view, cache, ViewBatch(pairs=stale[start:start + CHUNK]))
    watermark, partial = await view.progress()
    await view.apply(ViewBatch(watermark=max(watermark, revision), partial=partial))
    return {"revision": revision, "pairs": len(pairs), "credentials": credentials, "tombstoned": len(stale)}


async def _write(view: UnlockView, cache: RedisUnlockCache | None, batch: ViewBatch) -> None:
    watermark, partial = await view.progress()
    batch.watermark, batch.partial = watermark, partial
    if cache is not None:
        await cache.write(batch.pairs, batch.credentials)
    await view.apply(batch)
