"""The access snapshot: what the access service rebuilds its unlock view from.

Every (door, user) pair with an active grant, with the `AccessChanged` the
write side would publish for it, then every credential, all read in one
REPEATABLE READ READ ONLY transaction and stamped with its revision. The
pairs' access comes from `effective.pair_access`, the function every write
and `ExplainAccess` use, so the snapshot and the events cannot disagree.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import cast

import grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from access_rules.codec import to_event
from latchkit.errors import ServiceError, abort
from services.permissions import effective
from services.permissions.domain import Credential, Pair
from services.permissions.ports import PermissionsStore, UnitOfWorkFactory

CHUNK = 500
"""Items per message, and pairs per `pair_access` query."""
MAX_MESSAGE_BYTES = 1 << 20
"""A message is closed once it reaches this size (the server sends at most 4 MiB)."""


class AccessSnapshot:
    """The use case behind `ExportAccessSnapshot` (see the proto for the contract)."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def serve(self, context: grpc.aio.ServicerContext) -> None:
        """Each message is written once the reader has taken the previous one."""
        try:
            async with contextlib.aclosing(self.export()) as messages:
                async for message in messages:
                    await context.write(message)
        except ServiceError as exc:
            # The database's outage, before or during the stream: UNAVAILABLE, not UNKNOWN.
            await abort(context, exc)

    async def export(self) -> AsyncGenerator[pm.ExportAccessSnapshotResponse, None]:
        """The snapshot as `ExportAccessSnapshot` streams it.

        The transaction stays open across every yield: each message is computed only
        when the reader has taken the previous one, from the same snapshot.
        """
        async with self.uow.read(snapshot=True) as uow:
            store = uow.store
            revision = await store.revision()
            pairs = sorted(await store.all_pairs())
            credentials = await store.all_credentials()
            async for message in _messages(store, revision, pairs, credentials):
                yield message


async def _messages(store: PermissionsStore, revision: int, pairs: list[Pair],
                    credentials: list[Credential]) -> AsyncGenerator[pm.ExportAccessSnapshotResponse, None]:
    def message() -> pm.ExportAccessSnapshotResponse:
        return pm.ExportAccessSnapshotResponse(revision=revision, pairs_total=len(pairs),
                                               credentials_total=len(credentials))

    sent = False
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start:start + CHUNK]
        access = await effective.pair_access(store, set(chunk))
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
            pm.AccessSnapshotCredential(credential_id=c.credential_id, user_id=c.user_id,
                                        kind=cast(ev.CredentialKind, c.kind),
                                        secret_hash=c.secret_hash, revoked=c.revoked)
            for c in credentials[start:start + CHUNK])
        yield out
        sent = True
    if not sent:
        yield message()
