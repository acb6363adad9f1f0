"""The batch use cases on in-memory adapters: all or nothing, one revision, items named, idempotent retries."""

from __future__ import annotations

import pytest
from latchkey.events.v1 import events_pb2 as ev

from latchkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.permissions.directory import NewUser
from services.permissions.entitlements import NewGrant
from services.permissions.service import Idempotent, Replayed, Written
from tests.unit.fakes_permissions import T0, UNKNOWN, FakeDatabase
from tests.unit.test_permissions_use_cases import events_of


def to_user(user_id: str, door_id: str) -> NewGrant:
    return NewGrant(user_id, "", door_id, None, None, "")


def batch_retry(request_id: str, body: bytes) -> Idempotent:
    """What the entrypoint passes for a batch: the answer is stored as the revision."""
    return Idempotent(caller="admin", request_id=request_id, method="BatchGrantAccess", request=body,
                      encode=lambda value, revision: f"{len(value)}@{revision}".encode())


async def setup(use_cases) -> tuple[list[str], str]:
    directory, _ = use_cases
    users = (await directory.create_users([NewUser(f"U{i}", "", "") for i in range(3)])).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    return [u.user_id for u in users], door.door_id


async def test_a_batch_commits_one_revision_with_one_access_event_per_pair(db: FakeDatabase, use_cases):
    _, entitlements = use_cases
    users, door = await setup(use_cases)
    before = db.state.revision
    # Two grants to the same pair and one to another: one revision, three GrantChanged, two AccessChanged.
    written = await entitlements.grant_many([to_user(users[0], door), to_user(users[0], door),
                                             to_user(users[1], door)])
    assert isinstance(written, Written) and written.revision == before + 1 == db.state.revision
    assert [g.user_id for g in written.value] == [users[0], users[0], users[1]]
    events = events_of(db, written.revision)
    assert sum(isinstance(e, ev.GrantChanged) for e in events) == 3
    access = [e for e in events if isinstance(e, ev.AccessChanged)]
    assert sorted((e.user_id, len(e.rules)) for e in access) == sorted([(users[0], 2), (users[1], 1)])


async def test_a_batch_with_a_failing_item_writes_nothing_and_names_the_item(db: FakeDatabase, use_cases):
    _, entitlements = use_cases
    users, door = await setup(use_cases)
    before = db.state.revision
    with pytest.raises(NotFound, match=r"^requests\[2\]\.grant\.door_id "):
        await entitlements.grant_many([to_user(users[0], door), to_user(users[1], door), to_user(users[2], UNKNOWN)])
    with pytest.raises(InvalidArgument) as info:
        await entitlements.grant_many([to_user(users[0], door),
                                       NewGrant(users[1], "", door, T0, T0, "")])
    assert info.value.field == "requests[1].grant.valid_until"
    assert db.state.revision == before and not db.state.grants and not events_of(db, before + 1)


async def test_a_repeated_or_taken_external_id_fails_the_batch_naming_the_item(db: FakeDatabase, use_cases):
    directory, _ = use_cases
    await directory.create_user("Ada", "", "ext-1")
    with pytest.raises(AlreadyExists, match=r"^requests\[1\]: "):
        await directory.create_users([NewUser("Bob", "", "ext-2"), NewUser("Cy", "", "ext-1")])
    with pytest.raises(AlreadyExists, match=r"^requests\[2\]: "):
        await directory.create_users([NewUser("Bob", "", "ext-2"), NewUser("Cy", "", ""), NewUser("Di", "", "ext-2")])
    assert db.state.revision == 1 and len(db.state.users) == 1


async def test_a_batch_retry_gets_the_first_answer_without_writing(db: FakeDatabase, use_cases):
    _, entitlements = use_cases
    users, door = await setup(use_cases)
    first = await entitlements.grant_many([to_user(u, door) for u in users], batch_retry("b-1", b"three"))
    assert isinstance(first, Written) and len(db.state.grants) == 3
    again = await entitlements.grant_many([to_user(u, door) for u in users], batch_retry("b-1", b"three"))
    assert again == Replayed(f"3@{first.revision}".encode())
    with pytest.raises(InvalidArgument) as info:
        await entitlements.grant_many([to_user(users[0], door)], batch_retry("b-1", b"one"))
    assert info.value.field == "request_id"
    assert db.state.revision == first.revision and len(db.state.grants) == 3


async def test_revoking_a_batch_with_a_revoked_or_unknown_grant_revokes_nothing(db: FakeDatabase, use_cases):
    _, entitlements = use_cases
    users, door = await setup(use_cases)
    grants = (await entitlements.grant_many([to_user(u, door) for u in users])).value
    await entitlements.revoke(grants[1].grant_id)
    before = db.state.revision
    with pytest.raises(FailedPrecondition, match=r"^grant_ids\[1\]: "):
        await entitlements.revoke_many([grants[0].grant_id, grants[1].grant_id])
    with pytest.raises(NotFound, match=r"^grant_ids\[1\] "):
        await entitlements.revoke_many([grants[0].grant_id, UNKNOWN])
    with pytest.raises(InvalidArgument) as info:
        await entitlements.revoke_many([grants[0].grant_id, grants[0].grant_id])
    assert info.value.field == "grant_ids[1]"
    assert db.state.revision == before and not db.state.grants[grants[0].grant_id].revoked
    # The good ones together: one revision, the pairs now without rules.
    written = await entitlements.revoke_many([grants[2].grant_id, grants[0].grant_id])
    assert written.revision == before + 1 and [g.grant_id for g in written.value] == [grants[2].grant_id,
                                                                                      grants[0].grant_id]
    access = [e for e in events_of(db, written.revision) if isinstance(e, ev.AccessChanged)]
    assert sorted(e.user_id for e in access) == sorted([users[0], users[2]]) and not any(e.rules for e in access)


async def test_batch_membership_changes_only_what_differs_in_one_revision(db: FakeDatabase, use_cases):
    directory, _ = use_cases
    users, _ = await setup(use_cases)
    group = (await directory.create_group("Staff")).value
    await directory.set_member(group.group_id, users[0], True)
    before = db.state.revision
    # users[0] is a member already: only the other two change, in one revision.
    added = await directory.set_members(group.group_id, users, True)
    assert added.revision == before + 1
    assert sorted(e.user_id for e in events_of(db, added.revision)) == sorted(users[1:])
    # Removing a non-member in a batch changes nothing for it; a missing user fails the whole batch.
    with pytest.raises(NotFound, match=r"^user_ids\[1\] "):
        await directory.set_members(group.group_id, [users[0], UNKNOWN], False)
    outsider = (await directory.create_user("Out", "", "")).value.user_id
    removed = await directory.set_members(group.group_id, [users[1], outsider], False)
    assert removed.revision == added.revision + 2
    assert [e.user_id for e in events_of(db, removed.revision)] == [users[1]]
    # The single RPC keeps its rule: removing a non-member is NOT_FOUND.
    with pytest.raises(NotFound, match="is not a member"):
        await directory.set_member(group.group_id, outsider, False)
