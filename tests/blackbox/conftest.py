"""The black-box contract suite: the three services as processes, spoken to over mTLS gRPC only.

It reuses the end-to-end `system` (the services started from their entry
points on the test stack) and builds its own channels with the built-in test
identities. The suite checks promises of the API, not of a store, so it runs
on the embedded leg only: the CQL leg of `system` is deselected here.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from latchkey.access.v1 import access_pb2_grpc
from latchkey.audit.v1 import audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit.tls import channel_credentials

HERE = __file__.rsplit("/", 1)[0]


def pytest_collection_modifyitems(config, items):
    cql = [i for i in items if str(i.path).startswith(HERE) and "[cql" in i.nodeid]
    if cql:
        items[:] = [i for i in items if i not in cql]
        config.hook.pytest_deselected(items=cql)


def rid() -> str:
    return uuid.uuid4().hex


class Stub:
    """A stub whose calls carry a deadline (10 s unless told) and raise grpc.RpcError."""

    def __init__(self, channel, stub_class) -> None:
        self._stub = stub_class(channel)

    def future(self, name: str, request, timeout: float = 30):
        """Start a call without waiting for it; `.result()` waits."""
        return getattr(self._stub, name).future(request, timeout=timeout)

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(request, timeout: float = 10, **kwargs):
            return method(request, timeout=timeout, **kwargs)

        return call


def refused(call, code: grpc.StatusCode) -> grpc.RpcError:
    """Run `call` (a no-argument callable) and return its error, which must have `code`."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            list(result)
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value


def bad_fields(err: grpc.RpcError) -> list[str]:
    """The fields a google.rpc.BadRequest detail names (grpc-status-details-bin)."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            fields = []
            for detail in status.details:
                request = error_details_pb2.BadRequest()
                if detail.Unpack(request):
                    fields += [v.field for v in request.field_violations]
            return fields
    return []


def channel(system, pki, service: str, identity: str = "admin", tls=None):  # noqa: F811
    return grpc.secure_channel(system.targets[service], channel_credentials(tls or pki.tls(identity)))


@pytest.fixture
def perms(system, pki):  # noqa: F811
    """PermissionsService as the admin."""
    with channel(system, pki, "permissions") as ch:
        yield Stub(ch, permissions_pb2_grpc.PermissionsServiceStub)


@pytest.fixture
def access_admin(system, pki):  # noqa: F811
    """AccessService as the admin (who may ask about revisions, not unlock)."""
    with channel(system, pki, "access") as ch:
        yield Stub(ch, access_pb2_grpc.AccessServiceStub)


@pytest.fixture
def auditor(system, pki):  # noqa: F811
    """AuditService as the auditor."""
    with channel(system, pki, "audit", "auditor") as ch:
        yield Stub(ch, audit_pb2_grpc.AuditServiceStub)


@pytest.fixture
def door_controller(system, pki):  # noqa: F811
    """door_controller(door_id): AccessService as that door's controller; closed after the test."""
    opened = []

    def make(door_id: str) -> Stub:
        ch = channel(system, pki, "access", tls=pki.issue("door", door_id))
        opened.append(ch)
        return Stub(ch, access_pb2_grpc.AccessServiceStub)

    yield make
    for ch in opened:
        ch.close()


def new_user(perms, name: str = "Ada", **fields) -> pm.User:
    return perms.CreateUser(pm.CreateUserRequest(request_id=rid(), user=pm.User(display_name=name, **fields))).user


def new_door(perms, zone: str = "UTC", **fields) -> pm.Door:
    return perms.CreateDoor(pm.CreateDoorRequest(request_id=rid(), door=pm.Door(name="Door", time_zone=zone,
                                                                                   **fields))).door


def new_group(perms) -> pm.Group:
    return perms.CreateGroup(pm.CreateGroupRequest(request_id=rid(), group=pm.Group(name="g-" + rid()))).group
