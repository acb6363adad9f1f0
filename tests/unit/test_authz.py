"""The authorization table: deny by default, each role only what it needs."""

import pytest

from latchkit import authz
from latchkit.identity import Principal

ADMIN = Principal.parse("spiffe://latchkey/role/admin")
AUDITOR = Principal.parse("spiffe://latchkey/role/auditor")
DOOR = Principal.parse("spiffe://latchkey/door/front")
ACCESS_SVC = Principal.parse("spiffe://latchkey/service/access")
STRANGER = Principal.parse("spiffe://latchkey/role/janitor")


@pytest.mark.parametrize(
    ("principal", "method", "expected"),
    [
        (ADMIN, authz.PERMISSIONS + "GrantAccess", True),
        (ADMIN, authz.ACCESS + "Unlock", False),
        (ADMIN, authz.ACCESS + "WaitForRevision", True),
        (AUDITOR, authz.AUDIT + "AuditLog", True),
        (AUDITOR, authz.PERMISSIONS + "GetUser", False),
        (AUDITOR, authz.ACCESS + "Unlock", False),
        (DOOR, authz.ACCESS + "Unlock", True),
        (DOOR, authz.ACCESS + "GetViewRevision", False),
        (DOOR, authz.PERMISSIONS + "ListUsers", False),
        (ACCESS_SVC, authz.PERMISSIONS + "ListGrants", True),
        (ACCESS_SVC, authz.PERMISSIONS + "GrantAccess", False),
        (STRANGER, authz.AUDIT + "AuditLog", False),
    ],
)
def test_policy_table(principal, method, expected):
    assert authz.allowed(principal, method) is expected


def test_door_may_unlock_only_its_own_door():
    assert authz.may_unlock(DOOR, "front")
    assert not authz.may_unlock(DOOR, "back")
    assert not authz.may_unlock(ADMIN, "front")
    assert not authz.may_unlock(None, "front")
