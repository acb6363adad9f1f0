"""Use cases for users, doors, groups and schedules (see `service.py` for what they share)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import Window
from latchkit.errors import AlreadyExists, FailedPrecondition, NotFound
from services.permissions import effective
from services.permissions.domain import Door, Group, Page, Schedule, User
from services.permissions.ports import PermissionsStore, Together, UnitOfWork
from services.permissions.service import (
    Idempotent,
    Replayed,
    UseCases,
    Written,
    credential_event,
    door_event,
    grant_event,
    need,
    schedule_event,
    user_event,
)
from services.permissions.validation import SINGLE, Items, distinct_ids


@dataclass(frozen=True, slots=True)
class NewUser:
    display_name: str
    email: str
    external_id: str
    """'' for none."""


ACCESS_FIELDS = ("time_zone", "lockdown", "max_view_staleness_ms")
"""Door fields that change who may open it: a change to one republishes the door's pairs."""


class Directory(UseCases):
    # ---- users -----------------------------------------------------------------
    async def create_user(self, display_name: str, email: str, external_id: str,
                          idempotent: Idempotent | None = None) -> Written[User] | Replayed:
        new = NewUser(display_name, email, external_id)

        async def work(uow: UnitOfWork) -> User:
            return (await self._insert_users(uow, [new], SINGLE))[0]
        return await self._write(work, idempotent, Together("user", new, self._users_together, lambda user: user.user_id))

    async def _users_together(self, uow: UnitOfWork, new: list[NewUser]) -> list[User]:
        return await self._insert_users(uow, new, SINGLE if len(new) == 1 else Items("requests"))

    async def create_users(self, new: list[NewUser],
                           idempotent: Idempotent | None = None) -> Written[list[User]] | Replayed:
        """All or nothing, one revision; errors name the item (`requests[i]`)."""
        async def work(uow: UnitOfWork) -> list[User]:
            return await self._insert_users(uow, new, Items("requests"))
        return await self._write(work, idempotent)

    async def _insert_users(self, uow: UnitOfWork, new: list[NewUser], names: Items) -> list[User]:
        wanted = [n.external_id for n in new if n.external_id]
        taken = await uow.store.taken_external_ids(wanted) if wanted else set()
        for i, n in enumerate(new):
            # Taken before, or by an earlier item of this batch.
            if n.external_id and n.external_id in taken:
                raise AlreadyExists(names.says(i, f"a user with external_id {n.external_id!r} already exists"))
            taken.add(n.external_id)
        at = self.now()
        users = await uow.store.insert_users([User(self.new_id(), n.display_name, n.email, n.external_id, False, at,
                                                   at) for n in new])
        for user in users:
            uow.emit(user_event(user), f"user/{user.user_id}")
        return users

    async def get_user(self, user_id: str) -> User:
        return need(await self._read(lambda s: s.get_user(user_id)), "user_id", user_id)

    async def list_users(self, size: int, token: str, suspended: bool | None) -> Page[User]:
        return await self._page("users", size, token, lambda s, a, n: s.list_users(a, n, suspended=suspended),
                                 filters=(suspended,))

    async def update_user(self, user_id: str, changes: dict[str, str]) -> Written[User]:
        async def work(uow: UnitOfWork) -> User:
            user = need(await uow.store.get_user(user_id, lock=True), "user_id", user_id)
            x = changes.get("external_id")
            if x and await uow.store.external_id_taken(x, other_than=user_id):
                raise AlreadyExists(f"a user with external_id {x!r} already exists")
            if not changes:
                return user
            user = await uow.store.update_user(user_id, changes, self.now())
            uow.emit(user_event(user), f"user/{user_id}")
            return user
        return await self._write(work)

    async def set_suspended(self, user_id: str, suspended: bool) -> Written[User]:
        async def work(uow: UnitOfWork) -> User:
            user = need(await uow.store.get_user(user_id, lock=True), "user_id", user_id)
            if user.suspended == suspended:
                return user  # already so: no change, no revision
            user = await uow.store.update_user(user_id, {"suspended": suspended}, self.now())
            uow.emit(user_event(user), f"user/{user_id}")
            await effective.publish_pairs(uow, await uow.store.pairs_of_user(user_id))
            return user
        return await self._write(work)

    async def delete_user(self, user_id: str) -> Written[None]:
        async def work(uow: UnitOfWork) -> None:
            store = uow.store
            user = need(await store.get_user(user_id, lock=True), "user_id", user_id)
            pairs = await store.pairs_of_user(user_id)
            credentials = await store.credentials_of_user(user_id)
            grants = await store.active_grants(user_id=user_id)
            await store.delete_user(user_id)
            for c in credentials:
                uow.emit(credential_event(c, deleted=True), f"credential/{c.credential_id}")
            for g in grants:
                uow.emit(grant_event(g, revoked=True), f"grant/{g.grant_id}")
            uow.emit(user_event(user, deleted=True), f"user/{user_id}")
            await effective.publish_pairs(uow, pairs)
        return await self._write(work)

    # ---- doors -----------------------------------------------------------------
    async def create_door(self, name: str, site: str, time_zone: str, lockdown: bool, max_view_staleness_ms: int,
                          idempotent: Idempotent | None = None) -> Written[Door] | Replayed:
        async def work(uow: UnitOfWork) -> Door:
            door = await uow.store.insert_door(self.new_id(), name, site, time_zone, lockdown,
                                               max_view_staleness_ms, self.now())
            uow.emit(door_event(door), f"door/{door.door_id}")
            return door
        return await self._write(work, idempotent)

    async def get_door(self, door_id: str) -> Door:
        return need(await self._read(lambda s: s.get_door(door_id)), "door_id", door_id)

    async def list_doors(self, size: int, token: str, site: str) -> Page[Door]:
        return await self._page("doors", size, token, lambda s, a, n: s.list_doors(a, n, site=site),
                                 filters=(site,))

    async def update_door(self, door_id: str, changes: dict[str, Any]) -> Written[Door]:
        async def work(uow: UnitOfWork) -> Door:
            old = need(await uow.store.get_door(door_id, lock=True), "door_id", door_id)
            if not changes:
                return old
            door = await uow.store.update_door(door_id, changes, self.now())
            uow.emit(door_event(door), f"door/{door_id}")
            if any(getattr(door, k) != getattr(old, k) for k in ACCESS_FIELDS):
                await effective.publish_pairs(uow, await uow.store.pairs_of_door(door_id))
            return door
        return await self._write(work)

    async def set_lockdown(self, door_id: str, lockdown: bool) -> Written[Door]:
        return await self.update_door(door_id, {"lockdown": lockdown})

    async def delete_door(self, door_id: str) -> Written[None]:
        async def work(uow: UnitOfWork) -> None:
            store = uow.store
            door = need(await store.get_door(door_id, lock=True), "door_id", door_id)
            pairs = await store.pairs_of_door(door_id)
            grants = await store.active_grants(door_id=door_id)
            await store.delete_door(door_id)
            for g in grants:
                uow.emit(grant_event(g, revoked=True), f"grant/{g.grant_id}")
            uow.emit(door_event(door, deleted=True), f"door/{door_id}")
            await effective.publish_pairs(uow, pairs)
        return await self._write(work)

    # ---- groups ----------------------------------------------------------------
    @staticmethod
    async def _unique_group_name(store: PermissionsStore, name: str, group_id: str = "") -> None:
        if await store.group_name_taken(name, other_than=group_id):
            raise AlreadyExists(f"a group named {name!r} already exists")

    async def create_group(self, name: str, idempotent: Idempotent | None = None) -> Written[Group] | Replayed:
        async def work(uow: UnitOfWork) -> Group:
            await self._unique_group_name(uow.store, name)
            group = await uow.store.insert_group(self.new_id(), name, self.now())
            uow.emit(ev.GroupChanged(group_id=group.group_id, name=name), f"group/{group.group_id}")
            return group
        return await self._write(work, idempotent)

    async def get_group(self, group_id: str) -> Group:
        return need(await self._read(lambda s: s.get_group(group_id)), "group_id", group_id)

    async def list_groups(self, size: int, token: str) -> Page[Group]:
        return await self._page("groups", size, token, lambda s, a, n: s.list_groups(a, n))

    async def update_group(self, group_id: str, name: str | None) -> Written[Group]:
        async def work(uow: UnitOfWork) -> Group:
            group = need(await uow.store.get_group(group_id, lock=True), "group_id", group_id)
            if name is None or name == group.name:
                return group
            await self._unique_group_name(uow.store, name, group_id)
            group = await uow.store.rename_group(group_id, name, self.now())
            uow.emit(ev.GroupChanged(group_id=group_id, name=name), f"group/{group_id}")
            return group
        return await self._write(work)

    async def delete_group(self, group_id: str) -> Written[None]:
        async def work(uow: UnitOfWork) -> None:
            store = uow.store
            group = need(await store.get_group(group_id, lock=True), "group_id", group_id)
            pairs = await store.pairs_of_group(group_id)
            grants = await store.active_grants(group_id=group_id)
            await store.delete_group(group_id)
            for g in grants:
                uow.emit(grant_event(g, revoked=True), f"grant/{g.grant_id}")
            uow.emit(ev.GroupChanged(group_id=group_id, name=group.name, deleted=True), f"group/{group_id}")
            await effective.publish_pairs(uow, pairs)
        return await self._write(work)

    async def set_member(self, group_id: str, user_id: str, member: bool) -> Written[None]:
        """Adding a member twice changes nothing; removing a non-member is NOT_FOUND."""
        async def work(uow: UnitOfWork) -> None:
            await self._set_members(uow, group_id, [user_id], member, SINGLE, strict=True)
        return await self._write(work)

    async def set_members(self, group_id: str, user_ids: list[str], member: bool,
                          idempotent: Idempotent | None = None) -> Written[None] | Replayed:
        """All or nothing, one revision; errors name the item (`user_ids[i]`). Adding a member, or removing
        a non-member, changes nothing for that user."""
        distinct_ids(user_ids, "user_ids")

        async def work(uow: UnitOfWork) -> None:
            await self._set_members(uow, group_id, user_ids, member, Items("user_ids", nested=False), strict=False)
        return await self._write(work, idempotent)

    async def _set_members(self, uow: UnitOfWork, group_id: str, user_ids: list[str], member: bool, names: Items,
                           *, strict: bool) -> None:
        """`strict`: removing a non-member is NOT_FOUND (the single RPC) rather than no change."""
        store = uow.store
        need(await store.get_group(group_id, lock=True), "group_id", group_id)
        existing = await store.existing_users(user_ids)
        for i, user_id in enumerate(user_ids):
            if user_id not in existing:
                raise NotFound(f"{names.field(i, 'user_id')} {user_id} not found")
        if member:
            changed = await store.add_members(group_id, user_ids)
        else:
            changed = await store.remove_members(group_id, user_ids)
            if strict and len(changed) < len(user_ids):
                were = set(changed)
                i, user_id = next((i, u) for i, u in enumerate(user_ids) if u not in were)
                raise NotFound(names.says(i, f"user {user_id} is not a member of group {group_id}"))
        for user_id in changed:
            uow.emit(ev.GroupMembershipChanged(group_id=group_id, user_id=user_id, member=member),
                     f"membership/{group_id}/{user_id}")
        await effective.publish_pairs(uow, await effective.pairs_of_members(store, group_id, changed))

    async def list_members(self, group_id: str, size: int, token: str) -> Page[User]:
        async def group_exists(store: PermissionsStore) -> None:
            need(await store.get_group(group_id), "group_id", group_id)
        return await self._page("users", size, token, lambda s, a, n: s.list_members(group_id, a, n),
                                check=group_exists, filters=(group_id,))

    # ---- schedules -------------------------------------------------------------
    async def create_schedule(self, name: str, windows: list[Window],
                              idempotent: Idempotent | None = None) -> Written[Schedule] | Replayed:
        async def work(uow: UnitOfWork) -> Schedule:
            schedule = await uow.store.insert_schedule(self.new_id(), name, windows, self.now())
            uow.emit(schedule_event(schedule), f"schedule/{schedule.schedule_id}")
            return schedule
        return await self._write(work, idempotent)

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return need(await self._read(lambda s: s.get_schedule(schedule_id)), "schedule_id", schedule_id)

    async def list_schedules(self, size: int, token: str) -> Page[Schedule]:
        return await self._page("schedules", size, token, lambda s, a, n: s.list_schedules(a, n))

    async def update_schedule(self, schedule_id: str, name: str | None,
                              windows: list[Window] | None) -> Written[Schedule]:
        async def work(uow: UnitOfWork) -> Schedule:
            schedule = need(await uow.store.get_schedule(schedule_id, lock=True), "schedule_id", schedule_id)
            if name is None and windows is None:
                return schedule
            schedule = await uow.store.update_schedule(schedule_id, name, windows, self.now())
            uow.emit(schedule_event(schedule), f"schedule/{schedule_id}")
            if windows is not None:
                await effective.publish_pairs(uow, await uow.store.pairs_of_schedule(schedule_id))
            return schedule
        return await self._write(work)

    async def delete_schedule(self, schedule_id: str) -> Written[None]:
        async def work(uow: UnitOfWork) -> None:
            schedule = need(await uow.store.get_schedule(schedule_id, lock=True), "schedule_id", schedule_id)
            if await uow.store.schedule_in_use(schedule_id):
                raise FailedPrecondition(f"schedule {schedule_id} is used by an active grant; revoke it first")
            await uow.store.delete_schedule(schedule_id)
            uow.emit(schedule_event(schedule, deleted=True), f"schedule/{schedule_id}")
        return await self._write(work)
