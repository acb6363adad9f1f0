"""The e2e helpers' admin and door clients, on channels that reconnect quickly.

gRPC's default reconnect backoff grows to two minutes: after an outage a
client channel would fail calls fast (UNAVAILABLE) long after the server is
back, and the run would measure the client, not the system.
"""

from __future__ import annotations

import grpc
from latchkey.access.v1 import access_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2_grpc

from latchkit.tls import channel_credentials
from tests.e2e import helpers

RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
             ("grpc.max_reconnect_backoff_ms", 500)]


class Admin(helpers.Admin):
    def __init__(self, system, pki) -> None:  # noqa: D107 - same as the helper, other channel options
        self.channel = grpc.secure_channel(system.targets["permissions"], channel_credentials(pki.tls("admin")),
                                           options=RECONNECT)
        self.stub = permissions_pb2_grpc.PermissionsServiceStub(self.channel)


class Door(helpers.Door):
    """A door controller as in the field: `min_revision` goes to Unlock alone, which may answer
    STALE_VIEW (the helper's default first waits for the view, as scenario tests need)."""

    def __init__(self, system, pki, door_id: str) -> None:  # noqa: D107
        self.door_id = door_id
        self.system, self.pki = system, pki
        self.channel = grpc.secure_channel(system.targets["access"],
                                           channel_credentials(pki.issue("door", door_id)), options=RECONNECT)
        self.stub = access_pb2_grpc.AccessServiceStub(self.channel)

    def unlock(self, **kwargs):
        return super().unlock(**kwargs, settle=False)
