"""AccessService servicer: deadlines enforced, protobuf straight through (the hot path)."""

from __future__ import annotations

from latchkey.access.v1 import access_pb2, access_pb2_grpc

from latchkit.errors import InvalidArgument, handles_errors
from latchkit.identity import current_principal
from services.access.service import UnlockService


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, service: UnlockService, max_deadline_seconds: float) -> None:
        self.service = service
        self.max_deadline = max_deadline_seconds

    @handles_errors
    async def Unlock(self, request, context):
        # A door controller must say how long it will wait: without a deadline a
        # stuck call would hold the door (and a server slot) forever.
        remaining = context.time_remaining()
        if remaining is None:
            raise InvalidArgument("grpc-timeout", "Unlock requires a deadline")
        if remaining > self.max_deadline:
            raise InvalidArgument("grpc-timeout", f"deadline must be at most {self.max_deadline:g} s")
        return await self.service.unlock(current_principal.get(), request, remaining)

    @handles_errors
    async def GetViewRevision(self, request, context):
        return access_pb2.GetViewRevisionResponse(applied_revision=await self.service.applied_revision())

    @handles_errors
    async def WaitForRevision(self, request, context):
        timeout = request.timeout.seconds + request.timeout.nanos / 1e9
        if request.timeout.seconds < 0 or request.timeout.nanos < 0 or timeout > 60:
            raise InvalidArgument("timeout", "must be within 0..60 s")
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining - 0.05, 0))
        applied = await self.service.wait_for_revision(request.revision, timeout)
        return access_pb2.WaitForRevisionResponse(applied_revision=applied, reached=applied >= request.revision)
