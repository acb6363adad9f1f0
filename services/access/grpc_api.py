"""AccessService servicer: deadlines enforced, protobuf straight through (the hot path)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
from latchkey.access.v1 import access_pb2, access_pb2_grpc

from latchkit.errors import InvalidArgument, Unavailable, handles_errors
from latchkit.identity import current_principal
from services.access.lookup import ANSWER_MARGIN_SECONDS
from services.access.service import UnlockService

WAIT_DEFAULT_SECONDS = 1.0
"""WaitForRevision's wait when the request sets no timeout."""
WAIT_MAX_SECONDS = 10.0
"""WaitForRevision's longest wait: a longer timeout waits this long (then reached=false)."""


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, service: UnlockService, max_deadline_seconds: float) -> None:
        self.service = service
        self.max_deadline = max_deadline_seconds

    @handles_errors
    async def Unlock(self, request: access_pb2.UnlockRequest,
                     context: grpc.aio.ServicerContext) -> access_pb2.UnlockResponse:
        # A door controller must say how long it will wait: without a deadline a
        # stuck call would hold the door (and a server slot) forever.
        remaining = context.time_remaining()
        if remaining is None:
            raise InvalidArgument("grpc-timeout", "Unlock requires a deadline")
        if remaining > self.max_deadline:
            raise InvalidArgument("grpc-timeout", f"deadline must be at most {self.max_deadline:g} s")
        return await self.service.unlock(current_principal.get(), request, remaining)

    @handles_errors
    async def GetViewRevision(self, request: access_pb2.GetViewRevisionRequest,
                              context: grpc.aio.ServicerContext) -> access_pb2.GetViewRevisionResponse:
        applied = await _from_the_view(self.service.applied_revision(), context.time_remaining())
        return access_pb2.GetViewRevisionResponse(applied_revision=applied)

    @handles_errors
    async def WaitForRevision(self, request: access_pb2.WaitForRevisionRequest,
                              context: grpc.aio.ServicerContext) -> access_pb2.WaitForRevisionResponse:
        # As the contract says: no timeout waits 1 s, a longer one than 10 s waits 10 s.
        if not request.HasField("timeout"):
            timeout = WAIT_DEFAULT_SECONDS
        elif request.timeout.seconds < 0 or request.timeout.nanos < 0:
            raise InvalidArgument("timeout", "must not be negative")
        else:
            timeout = min(request.timeout.seconds + request.timeout.nanos / 1e9, WAIT_MAX_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:
            # Leave the answer a tenth of the caller's deadline (at least the usual margin, at most
            # 0.25 s): a fixed 50 ms is not enough on a loaded host, and the caller then gets
            # DEADLINE_EXCEEDED instead of the `reached = false` the contract promises.
            margin = min(max(ANSWER_MARGIN_SECONDS, 0.1 * remaining), 0.25)
            timeout = min(timeout, max(remaining - margin, 0))
        applied = await _from_the_view(self.service.wait_for_revision(request.revision, timeout), remaining)
        return access_pb2.WaitForRevisionResponse(applied_revision=applied, reached=applied >= request.revision)


async def _from_the_view(read: Awaitable[int], time_remaining: float | None) -> int:
    """`read` (it may read the view), ended before the caller's deadline; a view that fails
    or hangs is the status UNAVAILABLE, not an error nobody can act on."""
    limit = None if time_remaining is None else max(time_remaining - ANSWER_MARGIN_SECONDS / 2, 0)
    try:
        async with asyncio.timeout(limit):
            return await read
    except Exception as exc:  # the view is down or too slow
        raise Unavailable("the unlock view did not answer; retry shortly") from exc
