"""The permissions use cases on in-memory adapters: results, statuses, revisions, events, idempotency."""

from __future__ import annotations

import datetime as dt

import pytest
from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import Reason, Window
from latchkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.permissions.service import Idempotent, Replayed, Written
from tests.unit.fakes_permissions import T0, UNKNOWN, FakeDatabase


def retry(request_id: str, body: bytes = b"body", method: str = "CreateUser", caller: str = "admin") -> Idempotent:
    """What the entrypoint passes: the answer is stored as `<id>@<revision>`."""
    return Idempotent(caller=caller, request_id=request_id, method=method, request=body,
                      encode=lambda value, revision: f"{value.user_id}@{revision}".encode())


def events_of(db: FakeDatabase, revision: int) -> list:
    return [payload for rev, _, payload, _ in db.state.outbox if rev == revision]


async def test_creating_a_user_commits_one_revision_with_its_event(db, use_cases):
    directory, _ = use_cases
    # A user is created: revision 1, one UserChanged, the row as stored.
    written = await directory.create_user("Ada", "ada@example.org", "ext-1")
    assert isinstance(written, Written) and written.revision == 1 and db.state.revision == 1
    assert written.value.display_name == "Ada" and not written.value.suspended
    [event] = events_of(db, 1)
    assert isinstance(event, ev.UserChanged) and event.state == ev.USER_STATE_ACTIVE
    assert (await directory.get_user(written.value.user_id)) == written.value


async def test_a_taken_external_id_is_already_exists_and_writes_nothing(db, use_cases):
    directory, _ = use_cases
    await directory.create_user("Ada", "", "ext-1")
    with pytest.raises(AlreadyExists):
        await directory.create_user("Bob", "", "ext-1")
    assert db.state.revision == 1 and len(db.state.users) == 1


async def test_each_write_takes_the_next_revision_and_a_no_op_takes_none(db, use_cases):
    directory, _ = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    group = (await directory.create_group("Staff")).value
    # Adding the member: revision 3; adding it again changes nothing and answers revision 3.
    assert (await directory.set_member(group.group_id, user.user_id, True)).revision == 3
    assert (await directory.set_member(group.group_id, user.user_id, True)).revision == 3
    # Suspending twice: the second is no change either.
    assert (await directory.set_suspended(user.user_id, True)).revision == 4
    assert (await directory.set_suspended(user.user_id, True)).revision == 4
    assert [rev for rev, idx, _, _ in db.state.outbox if idx == 0] == [1, 2, 3, 4]


async def test_a_grant_publishes_the_pair_and_a_revoke_withdraws_it(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    door = (await directory.create_door("Lab", "", "Europe/Madrid", False, 0)).value
    # Grant: the GrantChanged and the pair's AccessChanged share the revision.
    granted = await entitlements.grant(user.user_id, "", door.door_id, None, None, "")
    grant_event, access = events_of(db, granted.revision)
    assert isinstance(grant_event, ev.GrantChanged) and not grant_event.revoked
    assert (access.door_id, access.user_id, len(access.rules)) == (door.door_id, user.user_id, 1)
    verdict, revision = await entitlements.explain(user.user_id, door.door_id, T0)
    assert verdict.granted and revision == granted.revision
    # Revoke: the next revision, the pair now without rules.
    revoked = await entitlements.revoke(granted.value.grant_id)
    assert revoked.revision == granted.revision + 1 and revoked.value.revoked
    grant_event, access = events_of(db, revoked.revision)
    assert grant_event.revoked and len(access.rules) == 0
    verdict, _ = await entitlements.explain(user.user_id, door.door_id, T0)
    assert not verdict.granted and verdict.reason == Reason.NO_GRANT


async def test_a_group_grant_reaches_every_member(db, use_cases):
    directory, entitlements = use_cases
    ada = (await directory.create_user("Ada", "", "")).value
    bob = (await directory.create_user("Bob", "", "")).value
    group = (await directory.create_group("Staff")).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    await directory.set_member(group.group_id, ada.user_id, True)
    await directory.set_member(group.group_id, bob.user_id, True)
    granted = await entitlements.grant("", group.group_id, door.door_id, None, None, "")
    pairs = {(e.door_id, e.user_id) for e in events_of(db, granted.revision) if isinstance(e, ev.AccessChanged)}
    assert pairs == {(door.door_id, ada.user_id), (door.door_id, bob.user_id)}


async def test_a_grant_naming_a_missing_reference_is_not_found(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    with pytest.raises(NotFound, match="grant.door_id"):
        await entitlements.grant(user.user_id, "", UNKNOWN, None, None, "")
    assert db.state.revision == 1 and not db.state.grants


async def test_revoking_twice_is_failed_precondition_and_an_unknown_grant_not_found(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    grant = (await entitlements.grant(user.user_id, "", door.door_id, None, None, "")).value
    await entitlements.revoke(grant.grant_id)
    with pytest.raises(FailedPrecondition):
        await entitlements.revoke(grant.grant_id)
    with pytest.raises(NotFound):
        await entitlements.revoke(UNKNOWN)
    assert db.state.revision == 4


async def test_an_inverted_validity_window_is_invalid_argument(use_cases):
    _, entitlements = use_cases
    with pytest.raises(InvalidArgument) as info:
        await entitlements.grant(UNKNOWN, "", UNKNOWN, T0, T0, "")
    assert info.value.field == "grant.valid_until"


async def test_a_schedule_in_use_cannot_be_deleted(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    schedule = (await directory.create_schedule("Office", [Window(1, 540, 1020)])).value
    grant = (await entitlements.grant(user.user_id, "", door.door_id, None, None, schedule.schedule_id)).value
    with pytest.raises(FailedPrecondition):
        await directory.delete_schedule(schedule.schedule_id)
    # Once the grant is revoked the schedule goes, and the revoked grant keeps no schedule.
    await entitlements.revoke(grant.grant_id)
    await directory.delete_schedule(schedule.schedule_id)
    assert (await entitlements.get_grant(grant.grant_id)).schedule_id == ""


async def test_a_second_active_credential_with_the_same_secret_is_already_exists(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    card = (await entitlements.issue_credential(user.user_id, ev.CREDENTIAL_KIND_CARD, "0042", "badge")).value
    with pytest.raises(AlreadyExists):
        await entitlements.issue_credential(user.user_id, ev.CREDENTIAL_KIND_CARD, "0042", "again")
    # Revoked, the secret may be issued again; revoking twice is FAILED_PRECONDITION.
    await entitlements.revoke_credential(card.credential_id)
    with pytest.raises(FailedPrecondition):
        await entitlements.revoke_credential(card.credential_id)
    await entitlements.issue_credential(user.user_id, ev.CREDENTIAL_KIND_CARD, "0042", "again")


async def test_deleting_a_user_revokes_their_grants_and_credentials_in_one_revision(db, use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    await entitlements.grant(user.user_id, "", door.door_id, None, None, "")
    await entitlements.issue_credential(user.user_id, ev.CREDENTIAL_KIND_PIN, "1234", "")
    deleted = await directory.delete_user(user.user_id)
    kinds = [type(e).__name__ for e in events_of(db, deleted.revision)]
    assert kinds == ["CredentialChanged", "GrantChanged", "UserChanged", "AccessChanged"]
    with pytest.raises(NotFound):
        await directory.get_user(user.user_id)


async def test_unknown_ids_are_not_found(use_cases):
    directory, entitlements = use_cases
    for call in (directory.get_user(UNKNOWN), directory.update_door(UNKNOWN, {"name": "x"}),
                 directory.delete_group(UNKNOWN), directory.set_member(UNKNOWN, UNKNOWN, True),
                 entitlements.get_credential(UNKNOWN), entitlements.explain(UNKNOWN, UNKNOWN, T0),
                 directory.list_members(UNKNOWN, 10, "")):
        with pytest.raises(NotFound):
            await call


async def test_a_retry_with_the_same_request_id_gets_the_first_answer_without_writing(db, use_cases):
    directory, _ = use_cases
    first = await directory.create_user("Ada", "", "", retry("r-1"))
    assert isinstance(first, Written) and first.revision == 1
    # The same caller, request_id and request: the stored answer, no new user, no revision.
    again = await directory.create_user("Ada", "", "", retry("r-1"))
    assert again == Replayed(f"{first.value.user_id}@1".encode())
    assert db.state.revision == 1 and len(db.state.users) == 1
    # Another caller's request_id is its own.
    other = await directory.create_user("Ada", "", "", retry("r-1", caller="someone-else"))
    assert isinstance(other, Written) and other.revision == 2


async def test_a_request_id_reused_for_a_different_request_is_refused(db, use_cases):
    directory, _ = use_cases
    await directory.create_user("Ada", "", "", retry("r-1", body=b"Ada"))
    with pytest.raises(InvalidArgument) as info:
        await directory.create_user("Bob", "", "", retry("r-1", body=b"Bob"))
    assert info.value.field == "request_id"
    with pytest.raises(AlreadyExists):
        await directory.create_group("Staff", retry("r-1", body=b"Ada", method="CreateGroup"))
    assert db.state.revision == 1 and len(db.state.users) == 1 and not db.state.groups


async def test_a_failed_write_leaves_no_revision_row_or_stored_answer(db, use_cases):
    directory, _ = use_cases
    await directory.create_group("Staff")
    with pytest.raises(AlreadyExists):
        await directory.create_group("Staff", retry("r-2", method="CreateGroup"))
    assert db.state.revision == 1 and not db.state.idempotency


async def test_lists_page_in_id_order_with_tokens_of_their_own_kind(use_cases):
    directory, _ = use_cases
    names = [(await directory.create_user(f"U{i}", "", "")).value.display_name for i in range(5)]
    first = await directory.list_users(2, "", None)
    second = await directory.list_users(2, first.next_page_token, None)
    last = await directory.list_users(2, second.next_page_token, None)
    assert [u.display_name for u in first.items + second.items + last.items] == names
    assert last.next_page_token == ""
    with pytest.raises(InvalidArgument):
        await directory.list_doors(2, first.next_page_token, "")


async def test_explain_reads_suspension_lockdown_and_schedules_like_unlock(use_cases):
    directory, entitlements = use_cases
    user = (await directory.create_user("Ada", "", "")).value
    door = (await directory.create_door("Lab", "", "UTC", False, 0)).value
    # Mondays 09:00-10:00 only; T0 is a Monday at 10:00 UTC, just outside.
    schedule = (await directory.create_schedule("Early", [Window(1, 540, 600)])).value
    await entitlements.grant(user.user_id, "", door.door_id, None, None, schedule.schedule_id)
    verdict, _ = await entitlements.explain(user.user_id, door.door_id, T0)
    assert verdict.reason == Reason.OUTSIDE_SCHEDULE
    verdict, _ = await entitlements.explain(user.user_id, door.door_id, T0 - dt.timedelta(minutes=30))
    assert verdict.granted
    # Widening the schedule republishes the pair in the same revision.
    widened = await directory.update_schedule(schedule.schedule_id, None, [Window(1, 540, 1020)])
    assert {type(e).__name__ for e in events_of(directory.uow, widened.revision)} == {"ScheduleChanged",
                                                                                      "AccessChanged"}
    await directory.set_lockdown(door.door_id, True)
    verdict, _ = await entitlements.explain(user.user_id, door.door_id, T0)
    assert verdict.reason == Reason.DOOR_LOCKDOWN
    await directory.set_lockdown(door.door_id, False)
    await directory.set_suspended(user.user_id, True)
    verdict, revision = await entitlements.explain(user.user_id, door.door_id, T0)
    assert verdict.reason == Reason.USER_SUSPENDED and revision == 8
