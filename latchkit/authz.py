"""Who may call what: the one place the authorization rules live.

Deny by default. A rule names a principal kind (and for roles the role name)
and the methods it may call. Door controllers may call `Unlock`, and only for
their own door: `may_unlock` is the check the access service applies to the
request's door id.
"""

from __future__ import annotations

from latchkit.identity import Principal

PERMISSIONS = "/latchkey.permissions.v1.PermissionsService/"
ACCESS = "/latchkey.access.v1.AccessService/"
AUDIT = "/latchkey.audit.v1.AuditService/"

_PERMISSIONS_READS = (
    "GetUser", "ListUsers", "GetDoor", "ListDoors", "GetGroup", "ListGroups", "ListGroupMembers",
    "GetSchedule", "ListSchedules", "GetCredential", "ListCredentials", "GetGrant", "ListGrants",
    "ExplainAccess",
)


def _methods(prefix: str, names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(prefix + name for name in names)


# (kind, name or "*") -> allowed full method names, or a service prefix ending in "/".
RULES: dict[tuple[str, str], frozenset[str]] = {
    # Admins manage permissions, can wait for the view to catch up with their
    # writes, and may read the audit trail of what they did.
    ("role", "admin"): frozenset({PERMISSIONS, ACCESS + "GetViewRevision", ACCESS + "WaitForRevision", AUDIT}),
    # Auditors read the audit log and nothing else.
    ("role", "auditor"): frozenset({AUDIT}),
    # A door controller asks to open its own door (checked by may_unlock).
    ("door", "*"): frozenset({ACCESS + "Unlock"}),
    # The access service rebuilds its view from the snapshot permissions exports,
    # and may read the rest; it writes nothing there.
    ("service", "access"): _methods(PERMISSIONS, _PERMISSIONS_READS + ("ExportAccessSnapshot",)),
}


def allowed(principal: Principal, method: str) -> bool:
    """True if `principal` may call the full gRPC method name `method`."""
    for key in ((principal.kind, principal.name), (principal.kind, "*")):
        grants = RULES.get(key)
        if grants is None:
            continue
        if method in grants:
            return True
        prefix = method[: method.rfind("/") + 1]
        if prefix in grants:
            return True
    return False


def may_unlock(principal: Principal | None, door_id: str) -> bool:
    """A door controller's certificate names its door; it may only ask about that door."""
    return principal is not None and principal.kind == "door" and principal.name == door_id
