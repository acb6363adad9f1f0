"""Domain errors every service raises, and their one translation to gRPC status.

Use cases raise these; servicers never build status codes by hand. An
INVALID_ARGUMENT carries a `google.rpc.BadRequest` detail naming the field, so
a client can point at the exact input that was wrong.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    """Refused before any work, to shed load: retrying after `retry_after_s` is safe."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def trailing_metadata(error: ServiceError) -> tuple[tuple[str, bytes], ...]:
    """`grpc-status-details-bin` (what grpcio-status reads): a BadRequest naming the field of an
    INVALID_ARGUMENT, a RetryInfo with the delay of a RESOURCE_EXHAUSTED."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message)
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.reason)
        ]))
        status.details.append(detail)
    if isinstance(error, ResourceExhausted):
        detail = any_pb2.Any()
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(1, round(error.retry_after_s * 1000)))
        detail.Pack(retry)
        status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay a refusal carries (see `trailing_metadata`), or None."""
    for key, value in getattr(error, "trailing_metadata", lambda: ())() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    await context.abort(error.code, error.message, trailing_metadata=trailing_metadata(error))


def handles_errors(method):
    """Decorator for unary servicer methods: ServiceError -> its status, nothing else leaks."""
    import functools

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            await abort(context, exc)

    return wrapper
