"""The access snapshot: what the access service rebuilds its unlock view from.

Every (door, user) pair with an active grant, with the `AccessChanged` the
write side would publish for it, then every credential, all read in one
REPEATABLE READ READ ONLY transaction and stamped with its revision. The
pairs' access comes from `effective.pair_access`, the function every write
and `ExplainAccess` use, so the snapshot and the events cannot disagree.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.access_codec import to_event
from latchkit.errors import ServiceError, abort
from services.permissions import effective
from services.permissions.adapters.postgres import Database

CHUNK = 500
"""Items per message, and pairs per `pair_access` query."""
MAX_MESSAGE_BYTES = 1 << 20
"""A message is closed once it reaches this size (the server sends at most 4 MiB)."""

_PAIRS_SQL = (
    "SELECT door_id::text AS d, user_id::text AS u FROM grants WHERE NOT revoked AND user_id IS NOT NULL "
    "UNION SELECT g.door_id::text, m.user_id::text FROM grants g "
    "JOIN group_members m ON m.group_id = g.group_id WHERE NOT g.revoked "
    "ORDER BY 1, 2"
)
_CREDENTIALS_SQL = ("SELECT credential_id::text AS c, user_id::text AS u, kind, secret_hash, revoked "
                    "FROM credentials ORDER BY credential_id")


async def serve(db: Database, context: grpc.aio.ServicerContext) -> None:
    """`ExportAccessSnapshot`: each message written once the reader has taken the previous one."""
    try:
        async with contextlib.aclosing(export(db)) as messages:
            async for message in messages:
                await context.write(message)
    except ServiceError as exc:
        # The database's outage, before or during the stream: UNAVAILABLE, not UNKNOWN.
        await abort(context, exc)


async def export(db: Database) -> AsyncIterator[pm.ExportAccessSnapshotResponse]:
    """The snapshot as `ExportAccessSnapshot` streams it (see the proto for the contract).

    The transaction stays open across every yield: each message is computed only
    when the reader has taken the previous one, from the same snapshot.
    """
    async with db.read() as uow:
        await uow.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        revision = (await uow.row("SELECT revision FROM revision_counter WHERE id = 1"))["revision"]
        pairs = [(r["d"], r["u"]) for r in await uow.rows(_PAIRS_SQL)]
        credentials = await uow.rows(_CREDENTIALS_SQL)

        def message() -> pm.ExportAccessSnapshotResponse:
            return pm.ExportAccessSnapshotResponse(revision=revision, pairs_total=len(pairs),
                                                   credentials_total=len(credentials))

        sent = False
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start:start + CHUNK]
            access = await effective.pair_access(uow, set(chunk))
            out, size = message(), 0
            for door, user in chunk:
                item = pm.AccessSnapshotPair(door_id=door, user_id=user,
                                             access=to_event(door, user, access[(door, user)]))
                item_size = item.ByteSize()
                if out.pairs and size + item_size > MAX_MESSAGE_BYTES:
                    yield out
                    sent = True
                    out, size = message(), 0
                out.pairs.append(item)
                size += item_size
            yield out
            sent = True
        for start in range(0, len(credentials), CHUNK):
            out = message()
            out.credentials.extend(
                pm.AccessSnapshotCredential(credential_id=c["c"], user_id=c["u"], kind=c["kind"],
                                            secret_hash=bytes(c["secret_hash"]), revoked=c["revoked"])
                for c in credentials[start:start + CHUNK])
            yield out
            sent = True
        if not sent:
            yield message()
