"""Use cases for credentials, grants and the authoritative explanation (see `service.py`)."""

from __future__ import annotations

import datetime as dt

from access_rules.rules import Verdict, evaluate
from latchkit import secret_hash
from latchkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.permissions import effective
from services.permissions.domain import Credential, Grant, MissingReference, Page
from services.permissions.ports import UnitOfWork
from services.permissions.service import (
    Idempotent,
    Replayed,
    UseCases,
    Written,
    credential_event,
    grant_event,
    need,
)


class Entitlements(UseCases):
    """Who may open which door: credentials and grants."""

    # ---- credentials -----------------------------------------------------------
    async def issue_credential(self, user_id: str, kind: int, secret: str, label: str,
                               idempotent: Idempotent | None = None) -> Written[Credential] | Replayed:
        async def work(uow: UnitOfWork) -> Credential:
            need(await uow.store.get_user(user_id), "user_id", user_id)
            digest = secret_hash.hash_secret(self.hmac_key, kind, secret)
            if await uow.store.active_credential_exists(kind, digest):
                raise AlreadyExists("an active credential of this kind with this secret already exists")
            credential = await uow.store.insert_credential(self.new_id(), user_id, kind, digest, label, self.now())
            uow.emit(credential_event(credential), f"credential/{credential.credential_id}")
            return credential
        return await self._write(work, idempotent)

    async def get_credential(self, credential_id: str) -> Credential:
        return need(await self._read(lambda s: s.get_credential(credential_id)), "credential_id", credential_id)

    async def list_credentials(self, size: int, token: str, user_id: str) -> Page[Credential]:
        return await self._page("credentials", size, token, lambda s, a, n: s.list_credentials(a, n, user_id=user_id),
                                 filters=(user_id,))

    async def revoke_credential(self, credential_id: str) -> Written[Credential]:
        async def work(uow: UnitOfWork) -> Credential:
            credential = need(await uow.store.get_credential(credential_id, lock=True), "credential_id",
                              credential_id)
            if credential.revoked:
                raise FailedPrecondition(f"credential {credential_id} is already revoked")
            credential = await uow.store.revoke_credential(credential_id, self.now())
            uow.emit(credential_event(credential), f"credential/{credential_id}")
            return credential
        return await self._write(work)

    # ---- grants ----------------------------------------------------------------
    async def grant(self, user_id: str, group_id: str, door_id: str, valid_from: dt.datetime | None,
                    valid_until: dt.datetime | None, schedule_id: str,
                    idempotent: Idempotent | None = None) -> Written[Grant] | Replayed:
        """To a user or (exclusively) a group; '' for the other and for no schedule."""
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidArgument("grant.valid_until", "must be after valid_from")

        async def work(uow: UnitOfWork) -> Grant:
            # The store checks that the user (or group), door and schedule exist with the
            # insert itself: no lookups first, fewer round trips under the revision lock.
            try:
                grant = await uow.store.insert_grant(self.new_id(), user_id, group_id, door_id, valid_from,
                                                     valid_until, schedule_id, self.now())
            except MissingReference as exc:
                value = {"user_id": user_id, "group_id": group_id, "door_id": door_id,
                         "schedule_id": schedule_id}[exc.field]
                raise NotFound(f"grant.{exc.field} {value} not found") from None
            uow.emit(grant_event(grant), f"grant/{grant.grant_id}")
            await effective.publish_pairs(uow, await effective.pairs_of_grant(uow.store, grant))
            return grant
        return await self._write(work, idempotent)

    async def get_grant(self, grant_id: str) -> Grant:
        return need(await self._read(lambda s: s.get_grant(grant_id)), "grant_id", grant_id)

    async def list_grants(self, size: int, token: str, *, user_id: str, group_id: str, door_id: str,
                          include_revoked: bool) -> Page[Grant]:
        return await self._page("grants", size, token, lambda s, a, n: s.list_grants(
            a, n, user_id=user_id, group_id=group_id, door_id=door_id, include_revoked=include_revoked),
            filters=(user_id, group_id, door_id, include_revoked))

    async def revoke(self, grant_id: str) -> Written[Grant]:
        """Revoking an already revoked grant is FAILED_PRECONDITION."""
        async def work(uow: UnitOfWork) -> Grant:
            grant = await uow.store.revoke_grant(grant_id, self.now())
            if grant is None:
                need(await uow.store.get_grant(grant_id), "grant_id", grant_id)
                raise FailedPrecondition(f"grant {grant_id} is already revoked")
            uow.emit(grant_event(grant), f"grant/{grant_id}")
            await effective.publish_pairs(uow, await effective.pairs_of_grant(uow.store, grant))
            return grant
        return await self._write(work)

    # ---- explain ---------------------------------------------------------------
    async def explain(self, user_id: str, door_id: str, at: dt.datetime) -> tuple[Verdict, int]:
        """May the user open the door at `at`, and why; with the revision the answer reflects."""
        # One snapshot for the data and the revision it corresponds to.
        async with self.uow.read(snapshot=True) as uow:
            revision = await uow.store.revision()
            need(await uow.store.get_user(user_id), "user_id", user_id)
            need(await uow.store.get_door(door_id), "door_id", door_id)
            access = (await effective.pair_access(uow.store, {(door_id, user_id)}))[(door_id, user_id)]
        return evaluate(access, at), revision
