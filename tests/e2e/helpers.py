"""Small clients for the end-to-end tests: an admin, door controllers, an auditor."""

from __future__ import annotations

import time
import uuid

import grpc
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit.tls import channel_credentials


def rid() -> str:
    return uuid.uuid4().hex


class Admin:
    def __init__(self, system, pki) -> None:
        self.channel = grpc.secure_channel(system.targets["permissions"], channel_credentials(pki.tls("admin")))
        self.stub = permissions_pb2_grpc.PermissionsServiceStub(self.channel)

    def __getattr__(self, name):
        method = getattr(self.stub, name)
        return lambda request: method(request, timeout=10)

    def user(self, name: str = "Ada"):
        return self.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name=name))).user

    def door(self, zone: str = "Europe/Madrid"):
        return self.CreateDoor(pm.CreateDoorRequest(request_id=rid(), door=pm.Door(name="Door", time_zone=zone))).door

    def grant(self, user_id: str, door_id: str, **fields):
        return self.GrantAccess(pm.GrantAccessRequest(request_id=rid(), grant=pm.Grant(
            user_id=user_id, door_id=door_id, **fields)))

    def close(self) -> None:
        self.channel.close()


class Door:
    """A door controller: its own certificate, naming its door."""

    def __init__(self, system, pki, door_id: str) -> None:
        self.door_id = door_id
        self.system, self.pki = system, pki
        self.channel = grpc.secure_channel(system.targets["access"], channel_credentials(pki.issue("door", door_id)))
        self.stub = access_pb2_grpc.AccessServiceStub(self.channel)

    def unlock(self, *, user_id: str = "", credential=None, min_revision: int = 0, request_id: str = "",
               door_id: str = "", timeout: float = 5, settle: bool = True):
        """Unlock; with `min_revision` (and `settle`), first wait, bounded, until the view has it.

        Unlock itself waits at most 1 s for min_revision, then answers STALE_VIEW: on a
        loaded test machine the projector can be later than that, and a scenario that
        uses min_revision to order its steps must not flake on it. `settle=False` asks
        Unlock alone (to see STALE_VIEW).
        """
        if min_revision and settle:
            wait_for_view(self.system, self.pki, min_revision, timeout=30)
        request = access_pb2.UnlockRequest(door_id=door_id or self.door_id, request_id=request_id or rid(),
                                           min_revision=min_revision)
        if credential is not None:
            request.credential.CopyFrom(credential)
        else:
            request.user_id = user_id
        return self.stub.Unlock(request, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def wait_for_view(system, pki, revision: int, timeout: float = 10) -> None:
    """Until the unlock view itself (the projector's work, not only the per-process caches) has `revision`."""
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(system.targets["access"], channel_credentials(pki.tls("admin"))) as channel:
        stub = access_pb2_grpc.AccessServiceStub(channel)
        while True:
            left = max(1, min(10, int(deadline - time.monotonic())))  # WaitForRevision waits at most 10 s
            answer = stub.WaitForRevision(access_pb2.WaitForRevisionRequest(revision=revision,
                                                                            timeout={"seconds": left}),
                                          timeout=left + 5)
            if answer.reached or time.monotonic() >= deadline:
                break
    assert answer.reached, f"the view is at {answer.applied_revision}, not {revision}"


def card(secret: str):
    return access_pb2.PresentedCredential(kind=1, secret=secret)


def audit_events(system, pki, *, count: int, timeout: float = 20, **filters) -> list:
    """Follow the audit log with `filters` until `count` events arrived (or fail at the timeout)."""
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        events = []
        for item in stub.AuditLog(audit_pb2.AuditLogRequest(follow=True, **filters), timeout=timeout):
            events.append(item)
            if len(events) >= count:
                break
        return events
