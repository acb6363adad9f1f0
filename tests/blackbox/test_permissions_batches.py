"""The batch RPCs of PermissionsService against the "Batches" comment of permissions.proto, over gRPC only.

A batch is all or nothing and commits as one transaction: one revision for all
its items, so the write after a batch carries the revision right after the
batch's, and the write after a refused batch the one right after the write
before it. Each bad item is named by its index, as its single RPC names the field.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from tests.blackbox.conftest import bad_fields, new_door, new_group, new_user, refused, rid
from tests.blackbox.test_access_contract import settled, unlock

C = grpc.StatusCode
MISSING = str(uuid.uuid4())


def a_write(perms) -> int:
    """One committed transaction; its revision."""
    return perms.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name="probe-" + rid()))).revision


def user_item(name: str = "Ada", **fields) -> pm.CreateUserRequest:
    return pm.CreateUserRequest(user=pm.User(display_name=name, **fields))


def grant_item(door_id: str, **subject) -> pm.GrantAccessRequest:
    return pm.GrantAccessRequest(grant=pm.Grant(door_id=door_id, **subject))


def active_grants(perms, **filters) -> list[str]:
    return [g.grant_id for g in perms.ListGrants(pm.ListGrantsRequest(**filters)).grants]


def members(perms, group_id: str) -> list[str]:
    return sorted(m.user_id for m in perms.ListGroupMembers(pm.ListGroupMembersRequest(group_id=group_id)).members)


# ---- BatchCreateUsers ------------------------------------------------------------------------------------------

def test_batch_create_users_returns_the_users_in_order_under_one_revision(perms):
    external = "batch-" + rid()
    before = a_write(perms)
    # Three users in one call: one revision, the users in the order asked, each readable.
    answer = perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[
        user_item("Ada"), user_item("Bob", email="bob@example.org"), user_item("Cy", external_id=external)]))
    assert answer.revision == before + 1
    assert [u.display_name for u in answer.users] == ["Ada", "Bob", "Cy"]
    assert answer.users[1].email == "bob@example.org" and answer.users[2].external_id == external
    for user in answer.users:
        assert perms.GetUser(pm.GetUserRequest(user_id=user.user_id)).user == user
        assert user.state == ev.USER_STATE_ACTIVE
    assert a_write(perms) == answer.revision + 1


def test_a_bad_user_field_fails_the_batch_naming_the_item_and_writes_nothing(perms):
    external = "batch-" + rid()
    before = a_write(perms)
    err = refused(lambda: perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[
        user_item("Ada", external_id=external), user_item("Bob"), user_item("")])), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["requests[2].user.display_name"]
    err = refused(lambda: perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[
        user_item("Ada"), user_item("Bob", email="e" * 321)])), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["requests[1].user.email"]
    # Nothing was written: no revision, and the first item's external_id is still free.
    assert a_write(perms) == before + 1
    new_user(perms, external_id=external)


def test_a_taken_or_repeated_external_id_is_already_exists_naming_the_item(perms):
    taken = "batch-" + rid()
    new_user(perms, external_id=taken)
    before = a_write(perms)
    # Taken by an existing user: the item that asks for it is named.
    err = refused(lambda: perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[
        user_item("Ada"), user_item("Bob", external_id=taken)])), C.ALREADY_EXISTS)
    assert "requests[1]" in err.details()
    # Twice in one batch: the second one is named.
    fresh = "batch-" + rid()
    err = refused(lambda: perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[
        user_item("Ada", external_id=fresh), user_item("Bob"), user_item("Cy", external_id=fresh)])),
        C.ALREADY_EXISTS)
    assert "requests[2]" in err.details() and "requests[0]" not in err.details()
    assert a_write(perms) == before + 1
    new_user(perms, external_id=fresh)


# ---- BatchGrantAccess ------------------------------------------------------------------------------------------

def test_batch_grant_access_grants_in_order_under_one_revision_and_the_doors_open(perms, door_controller,
                                                                                  access_admin):
    ada, bob, door, other_door, group = (new_user(perms), new_user(perms, "Bob"), new_door(perms), new_door(perms),
                                         new_group(perms))
    perms.AddGroupMember(pm.AddGroupMemberRequest(group_id=group.group_id, user_id=bob.user_id))
    before = a_write(perms)
    # Ada twice (two doors) and the group (Bob) once, in one call.
    answer = perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
        grant_item(door.door_id, user_id=ada.user_id), grant_item(other_door.door_id, user_id=ada.user_id),
        grant_item(door.door_id, group_id=group.group_id)]))
    assert answer.revision == before + 1
    assert [(g.door_id, g.user_id, g.group_id) for g in answer.grants] == [
        (door.door_id, ada.user_id, ""), (other_door.door_id, ada.user_id, ""), (door.door_id, "", group.group_id)]
    assert sorted(active_grants(perms, door_id=door.door_id)) == sorted(
        [answer.grants[0].grant_id, answer.grants[2].grant_id])
    # The access view reflects the whole batch at its revision: Ada and Bob (through the group) get in.
    settled(access_admin, answer.revision)
    ctl = door_controller(door.door_id)
    for user in (ada, bob):
        got = unlock(ctl, door.door_id, user_id=user.user_id, min_revision=answer.revision)
        assert got.decision == ev.DECISION_GRANTED, user.display_name
    assert unlock(door_controller(other_door.door_id), other_door.door_id, user_id=ada.user_id,
                  min_revision=answer.revision).decision == ev.DECISION_GRANTED


def test_a_grant_to_a_missing_door_fails_the_batch_naming_the_item_and_writes_nothing(perms):
    user, door = new_user(perms), new_door(perms)
    before = a_write(perms)
    err = refused(lambda: perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
        grant_item(door.door_id, user_id=user.user_id), grant_item(door.door_id, user_id=user.user_id),
        grant_item(MISSING, user_id=user.user_id)])), C.NOT_FOUND)
    assert "requests[2].grant.door_id" in err.details() and MISSING in err.details()
    err = refused(lambda: perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
        grant_item(door.door_id, user_id=user.user_id), grant_item(door.door_id, user_id=MISSING)])), C.NOT_FOUND)
    assert "requests[1].grant.user_id" in err.details()
    assert active_grants(perms, user_id=user.user_id) == []
    assert a_write(perms) == before + 1


def test_a_bad_grant_field_is_invalid_argument_naming_the_item(perms):
    user, door = new_user(perms), new_door(perms)
    before = a_write(perms)
    cases = [
        (grant_item("not-a-uuid", user_id=user.user_id), "requests[1].grant.door_id"),
        (grant_item(door.door_id), "requests[1].grant.user_id"),
        (pm.GrantAccessRequest(grant=pm.Grant(door_id=door.door_id, user_id=user.user_id,
                                              valid_from={"seconds": 2_000_000_000},
                                              valid_until={"seconds": 1_000_000_000})),
         "requests[1].grant.valid_until"),
    ]
    for bad, field in cases:
        err = refused(lambda bad=bad: perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
            grant_item(door.door_id, user_id=user.user_id), bad])), C.INVALID_ARGUMENT)
        assert bad_fields(err) == [field]
    assert active_grants(perms, user_id=user.user_id) == []
    assert a_write(perms) == before + 1


# ---- BatchRevokeAccess -----------------------------------------------------------------------------------------

def granted(perms, user, *doors) -> list[pm.Grant]:
    return list(perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
        grant_item(d.door_id, user_id=user.user_id) for d in doors])).grants)


def test_batch_revoke_access_revokes_in_order_under_one_revision_and_the_door_closes(perms, door_controller,
                                                                                    access_admin):
    user, door, other_door = new_user(perms), new_door(perms), new_door(perms)
    grants = granted(perms, user, door, door, other_door)
    before = a_write(perms)
    ids = [grants[2].grant_id, grants[0].grant_id, grants[1].grant_id]
    answer = perms.BatchRevokeAccess(pm.BatchRevokeAccessRequest(grant_ids=ids))
    assert answer.revision == before + 1
    assert [g.grant_id for g in answer.grants] == ids and all(g.revoked for g in answer.grants)
    assert active_grants(perms, user_id=user.user_id) == []
    # Both grants on the door went in one revision: the door is closed to the user at that revision.
    settled(access_admin, answer.revision)
    got = unlock(door_controller(door.door_id), door.door_id, user_id=user.user_id, min_revision=answer.revision)
    assert (got.decision, got.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT)


def test_a_revoked_or_unknown_grant_fails_the_batch_naming_it_and_revokes_nothing(perms):
    user, door = new_user(perms), new_door(perms)
    grants = granted(perms, user, door, door)
    perms.RevokeAccess(pm.RevokeAccessRequest(grant_id=grants[1].grant_id))
    before = a_write(perms)
    err = refused(lambda: perms.BatchRevokeAccess(pm.BatchRevokeAccessRequest(
        grant_ids=[grants[0].grant_id, grants[1].grant_id])), C.FAILED_PRECONDITION)
    assert "grant_ids[1]" in err.details()
    err = refused(lambda: perms.BatchRevokeAccess(pm.BatchRevokeAccessRequest(
        grant_ids=[grants[0].grant_id, MISSING])), C.NOT_FOUND)
    assert "grant_ids[1]" in err.details() and MISSING in err.details()
    assert active_grants(perms, user_id=user.user_id) == [grants[0].grant_id]
    assert a_write(perms) == before + 1


def test_a_grant_id_twice_or_malformed_is_invalid_argument_naming_it(perms):
    user, door = new_user(perms), new_door(perms)
    [grant] = granted(perms, user, door)
    err = refused(lambda: perms.BatchRevokeAccess(pm.BatchRevokeAccessRequest(
        grant_ids=[grant.grant_id, MISSING, grant.grant_id])), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["grant_ids[2]"]
    err = refused(lambda: perms.BatchRevokeAccess(pm.BatchRevokeAccessRequest(
        grant_ids=[grant.grant_id, "nope"])), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["grant_ids[1]"]
    assert active_grants(perms, user_id=user.user_id) == [grant.grant_id]


# ---- BatchAddGroupMembers / BatchRemoveGroupMembers ------------------------------------------------------------

def test_batch_members_are_added_and_removed_under_one_revision_each(perms):
    group = new_group(perms)
    users = [new_user(perms, f"U{i}").user_id for i in range(3)]
    before = a_write(perms)
    added = perms.BatchAddGroupMembers(pm.BatchAddGroupMembersRequest(group_id=group.group_id, user_ids=users))
    assert added.revision == before + 1 and members(perms, group.group_id) == sorted(users)
    # Adding members again changes nothing: the current revision, no new one.
    again = perms.BatchAddGroupMembers(pm.BatchAddGroupMembersRequest(group_id=group.group_id, user_ids=users[:2]))
    assert again.revision == added.revision
    # Removing two members and a user who is not one: one revision; the non-member changes nothing.
    outsider = new_user(perms).user_id
    removed = perms.BatchRemoveGroupMembers(pm.BatchRemoveGroupMembersRequest(
        group_id=group.group_id, user_ids=[users[0], outsider, users[2]]))
    assert removed.revision == added.revision + 2  # the outsider's creation came in between
    assert members(perms, group.group_id) == [users[1]]
    assert a_write(perms) == removed.revision + 1


def test_a_member_batch_with_a_missing_user_or_group_is_not_found_and_writes_nothing(perms):
    group, user = new_group(perms), new_user(perms)
    before = a_write(perms)
    for call, request in (
            (perms.BatchAddGroupMembers, pm.BatchAddGroupMembersRequest),
            (perms.BatchRemoveGroupMembers, pm.BatchRemoveGroupMembersRequest)):
        err = refused(lambda call=call, request=request: call(request(group_id=group.group_id,
                                                                      user_ids=[user.user_id, MISSING])), C.NOT_FOUND)
        assert "user_ids[1]" in err.details() and MISSING in err.details()
        refused(lambda call=call, request=request: call(request(group_id=MISSING, user_ids=[user.user_id])),
                C.NOT_FOUND)
    assert members(perms, group.group_id) == []
    assert a_write(perms) == before + 1


def test_a_user_id_twice_or_malformed_is_invalid_argument_naming_it(perms):
    group, user = new_group(perms), new_user(perms)
    for call, request in (
            (perms.BatchAddGroupMembers, pm.BatchAddGroupMembersRequest),
            (perms.BatchRemoveGroupMembers, pm.BatchRemoveGroupMembersRequest)):
        err = refused(lambda call=call, request=request: call(request(
            group_id=group.group_id, user_ids=[user.user_id, MISSING, user.user_id])), C.INVALID_ARGUMENT)
        assert bad_fields(err) == ["user_ids[2]"]
        err = refused(lambda call=call, request=request: call(request(
            group_id=group.group_id, user_ids=["x", user.user_id])), C.INVALID_ARGUMENT)
        assert bad_fields(err) == ["user_ids[0]"]
        err = refused(lambda call=call, request=request: call(request(group_id="", user_ids=[user.user_id])),
                      C.INVALID_ARGUMENT)
        assert bad_fields(err) == ["group_id"]
    assert members(perms, group.group_id) == []


# ---- every batch: size, items' request_id, idempotency -------------------------------------------------------------

def batches(perms) -> list[tuple[str, object, str]]:
    """(rpc, a valid request of one item that changes something, the field naming its list) for every batch."""
    user, member, door, group = new_user(perms), new_user(perms), new_door(perms), new_group(perms)
    [grant] = granted(perms, user, door)
    perms.AddGroupMember(pm.AddGroupMemberRequest(group_id=group.group_id, user_id=member.user_id))
    return [
        ("BatchCreateUsers", pm.BatchCreateUsersRequest(requests=[user_item()]), "requests"),
        ("BatchGrantAccess", pm.BatchGrantAccessRequest(requests=[grant_item(door.door_id, user_id=user.user_id)]),
         "requests"),
        ("BatchRevokeAccess", pm.BatchRevokeAccessRequest(grant_ids=[grant.grant_id]), "grant_ids"),
        ("BatchAddGroupMembers", pm.BatchAddGroupMembersRequest(group_id=group.group_id, user_ids=[user.user_id]),
         "user_ids"),
        ("BatchRemoveGroupMembers", pm.BatchRemoveGroupMembersRequest(group_id=group.group_id,
                                                                      user_ids=[member.user_id]), "user_ids"),
    ]


RPCS = ["BatchCreateUsers", "BatchGrantAccess", "BatchRevokeAccess", "BatchAddGroupMembers",
        "BatchRemoveGroupMembers"]


def one(perms, rpc: str):
    return next((request, field) for name, request, field in batches(perms) if name == rpc)


@pytest.mark.parametrize("rpc", RPCS)
def test_an_empty_batch_or_one_over_1000_items_is_invalid_argument(perms, rpc):
    request, field = one(perms, rpc)
    before = a_write(perms)
    empty = type(request)()
    empty.CopyFrom(request)
    empty.ClearField(field)
    err = refused(lambda: getattr(perms, rpc)(empty), C.INVALID_ARGUMENT)
    assert bad_fields(err) == [field]
    # 1,001 items: refused on the count, before any item is looked at (so empty items do).
    big = type(request)()
    big.CopyFrom(request)
    items = getattr(big, field)
    if field == "requests":
        for _ in range(1000):
            items.add()
    else:
        items.extend(str(uuid.uuid4()) for _ in range(1000))
    err = refused(lambda: getattr(perms, rpc)(big), C.INVALID_ARGUMENT)
    assert bad_fields(err) == [field]
    assert a_write(perms) == before + 1


def test_a_batch_of_1000_items_is_accepted(perms):
    group, door = new_group(perms), new_door(perms)
    users = perms.BatchCreateUsers(pm.BatchCreateUsersRequest(requests=[user_item(f"U{i}") for i in range(1000)]),
                                   timeout=60).users
    assert [u.display_name for u in users] == [f"U{i}" for i in range(1000)]
    added = perms.BatchAddGroupMembers(pm.BatchAddGroupMembersRequest(
        group_id=group.group_id, user_ids=[u.user_id for u in users]), timeout=60)
    assert added.revision > 0
    # 500 grants (a thousand would pass the 64 KiB request limit of the default settings).
    answer = perms.BatchGrantAccess(pm.BatchGrantAccessRequest(requests=[
        grant_item(door.door_id, user_id=u.user_id) for u in users[:500]]), timeout=60)
    assert [g.user_id for g in answer.grants] == [u.user_id for u in users[:500]]
    assert perms.ListGrants(pm.ListGrantsRequest(door_id=door.door_id, page_size=500)).next_page_token == ""


@pytest.mark.parametrize("rpc", ["BatchCreateUsers", "BatchGrantAccess"])
def test_an_items_own_request_id_is_invalid_argument(perms, rpc):
    request, _ = one(perms, rpc)
    request.requests.add().CopyFrom(request.requests[0])
    request.requests[1].request_id = rid()
    err = refused(lambda: getattr(perms, rpc)(request), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["requests[1].request_id"]


@pytest.mark.parametrize("rpc", RPCS)
def test_a_batch_retry_returns_the_first_answer_and_a_changed_retry_is_refused_writing_nothing(perms, rpc):
    request, _ = one(perms, rpc)
    request.request_id = rid()
    first = getattr(perms, rpc)(request)
    assert first.revision > 0
    # The same batch again: the first answer, not a second write.
    assert getattr(perms, rpc)(request) == first
    # The same request_id for another batch: refused naming request_id.
    changed = type(request)()
    changed.CopyFrom(request)
    if rpc in ("BatchCreateUsers", "BatchGrantAccess"):
        changed.requests.add().CopyFrom(changed.requests[0])
    else:
        changed.ClearField("grant_ids" if rpc == "BatchRevokeAccess" else "user_ids")
        getattr(changed, "grant_ids" if rpc == "BatchRevokeAccess" else "user_ids").append(MISSING)
    err = refused(lambda: getattr(perms, rpc)(changed), C.INVALID_ARGUMENT)
    assert bad_fields(err) == ["request_id"]
    assert a_write(perms) == first.revision + 1
