"""Use cases for credentials, grants and the authoritative explanation (see `service.py`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from access_rules.rules import Verdict, evaluate
from latchkit import secret_hash
from latchkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.permissions import effective
from services.permissions.domain import Credential, Grant, MissingReference, Page
from services.permissions.ports import Together, UnitOfWork
from services.permissions.service import (
    Idempotent,
    Replayed,
    UseCases,
    Written,
    credential_event,
    grant_event,
    need,
)
from services.permissions.validation import SINGLE, Items, distinct_ids


@dataclass(frozen=True, slots=True)
class NewGrant:
    """A grant to write: to a user or (exclusively) a group; '' for the other and for no schedule."""

    user_id: str
    group_id: str
    door_id: str
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    schedule_id: str


def _pair(grant: Grant) -> str | None:
    """The one pair a direct grant changes; a group's grant changes its members' (unknown here)."""
    return f"{grant.door_id}/{grant.user_id}" if grant.user_id else None


def _check_windows(new: list[NewGrant], names: Items) -> None:
    for i, n in enumerate(new):
        if n.valid_from and n.valid_until and n.valid_until <= n.valid_from:
            raise InvalidArgument(names.field(i, "grant.valid_until"), "must be after valid_from")


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
        new = [NewGrant(user_id, group_id, door_id, valid_from, valid_until, schedule_id)]
        _check_windows(new, SINGLE)

        async def work(uow: UnitOfWork) -> Grant:
            return (await self._insert_grants(uow, new, SINGLE))[0]
        return await self._write(work, idempotent, Together("grant", new[0], self._grants_together, _pair))

    async def _grants_together(self, uow: UnitOfWork, new: list[NewGrant]) -> list[Grant]:
        return await self._insert_grants(uow, new, SINGLE if len(new) == 1 else Items("requests"))

    async def grant_many(self, new: list[NewGrant],
                         idempotent: Idempotent | None = None) -> Written[list[Grant]] | Replayed:
        """All or nothing, one revision; errors name the item (`requests[i]`)."""
        names = Items("requests")
        _check_windows(new, names)

        async def work(uow: UnitOfWork) -> list[Grant]:
            return await self._insert_grants(uow, new, names)
        return await self._write(work, idempotent)

    async def _insert_grants(self, uow: UnitOfWork, new: list[NewGrant], names: Items) -> list[Grant]:
        at = self.now()
        rows = [Grant(self.new_id(), n.user_id, n.group_id, n.door_id, n.valid_from, n.valid_until, n.schedule_id,
                      False, at, None) for n in new]
        # The store checks that the users (or groups), doors and schedules exist with the
        # insert itself: no lookups first, fewer round trips under the revision lock.
        try:
            grants = await uow.store.insert_grants(rows)
        except MissingReference as exc:
            value = getattr(new[exc.index], exc.field)
            raise NotFound(f"{names.field(exc.index, 'grant.' + exc.field)} {value} not found") from None
        for grant in grants:
            uow.emit(grant_event(grant), f"grant/{grant.grant_id}")
        await effective.publish_pairs(uow, await effective.pairs_of_grants(uow.store, grants))
        return grants

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
            return (await self._revoke_grants(uow, [grant_id], SINGLE))[0]
        return await self._write(work, None, Together("revoke", grant_id, self._revokes_together, _pair))

    async def _revokes_together(self, uow: UnitOfWork, grant_ids: list[str]) -> list[Grant]:
        return await self._revoke_grants(uow, grant_ids,
                                         SINGLE if len(grant_ids) == 1 else Items("grant_ids", nested=False))

    async def revoke_many(self, grant_ids: list[str],
                          idempotent: Idempotent | None = None) -> Written[list[Grant]] | Replayed:
        """All or nothing, one revision; errors name the item (`grant_ids[i]`)."""
        distinct_ids(grant_ids, "grant_ids")

        async def work(uow: UnitOfWork) -> list[Grant]:
            return await self._revoke_grants(uow, grant_ids, Items("grant_ids", nested=False))
        return await self._write(work, idempotent)

    async def _revoke_grants(self, uow: UnitOfWork, grant_ids: list[str], names: Items) -> list[Grant]:
        grants = await uow.store.revoke_grants(grant_ids, self.now())
        if len(grants) < len(grant_ids):
            revoked = {g.grant_id for g in grants}
            i, grant_id = next((i, g) for i, g in enumerate(grant_ids) if g not in revoked)
            need(await uow.store.get_grant(grant_id), names.field(i, "grant_id"), grant_id)
            raise FailedPrecondition(names.says(i, f"grant {grant_id} is already revoked"))
        for grant in grants:
            uow.emit(grant_event(grant), f"grant/{grant.grant_id}")
        await effective.publish_pairs(uow, await effective.pairs_of_grants(uow.store, grants))
        return grants

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
