"""One server interceptor for every service: identity, authorization, metrics, trace spans.

grpc.aio does not expose the peer certificate to an interceptor, so the
interceptor wraps the method handler and reads `context.auth_context()` inside
the wrapped behaviour.

Tracing (`latchkit.tracing`): with it on, every call except health and
reflection gets a server span, child of the caller's W3C `traceparent` if
its metadata carries one; off, each call tests one boolean and nothing more.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import grpc

from latchkit import tracing
from latchkit.identity import Principal, current_principal, principal_from_context
from latchkit.metrics import HANDLED, HANDLING_SECONDS, STARTED, split_method

Policy = Callable[[Principal, str], bool]
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


def allow_any_principal(principal: Principal, method: str) -> bool:
    return True


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Every call needs a latchkey identity; `policy` decides what that identity may call.

    Health and reflection still need a certificate from our CA (the TLS
    handshake demands one) but no particular identity.
    """

    def __init__(self, policy: Policy = allow_any_principal) -> None:
        self._policy = policy
        # Labelled children by (method, code): `labels()` takes a lock on every call, a dict does not.
        self._started: dict[str, Any] = {}
        self._ended: dict[tuple[str, str], tuple] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        open_method = method in OPEN_METHODS
        policy = self._policy
        service, name = split_method(method)
        grpc_type = ("unary" if handler.unary_unary is not None else
                     "server_stream" if handler.unary_stream is not None else
                     "client_stream" if handler.stream_unary is not None else "bidi_stream")

        started_count = self._started.get(method)
        if started_count is None:
            started_count = self._started[method] = STARTED.labels(service, name, grpc_type)
        ended = self._ended

        async def check(context) -> bool:
            started_count.inc()
            principal = principal_from_context(context)
            if principal is None:
                if not open_method:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                        "no latchkey identity in the client certificate")
            elif not open_method and not policy(principal, method):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"{principal.uri} may not call {method}"
                )
            current_principal.set(principal)
            return True

        traced = not open_method

        def begin(context):
            """The call's server span and context token (tracing on), or None for an open method."""
            if traced:
                return tracing.start_server_span(context.invocation_metadata(), service, name)
            return None

        def record(context, started: float, failed: bool, span=None) -> None:
            code = context.code() if hasattr(context, "code") else None
            if code is None:
                if not failed:
                    code = grpc.StatusCode.OK
                else:
                    # A call the client gave up on (a follow it closed) ends in a cancel.
                    task = asyncio.current_task()
                    cancelled = task is not None and task.cancelling()
                    code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN
            code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            children = ended.get((method, code_name))
            if children is None:
                children = ended[(method, code_name)] = (HANDLED.labels(service, name, grpc_type, code_name),
                                                         HANDLING_SECONDS.labels(service, name, grpc_type, code_name))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
            if span is not None:
                tracing.end_server_span(span[0], span[1], code if isinstance(code, grpc.StatusCode)
                                        else grpc.StatusCode.UNKNOWN)

        def awaiting(inner):
            """A handler that returns (or writes its stream with `context.write`), wrapped."""
            async def call(request, context):
                started = time.perf_counter()
                failed = True
                span = begin(context) if tracing.ENABLED else None
                try:
                    await check(context)
                    response = await inner(request, context)
                    failed = False
                    return response
                finally:
                    record(context, started, failed, span)
            return call

        def yielding(inner):
            """A handler that is an async generator, wrapped. gRPC forbids mixing `context.write`
            with yielding, so each handler keeps its own style."""
            async def call(request, context):
                started = time.perf_counter()
                failed = True
                span = begin(context) if tracing.ENABLED else None
                try:
                    await check(context)
                    async for item in inner(request, context):
                        yield item
                    failed = False
                finally:
                    record(context, started, failed, span)
            return call

        def wrap(inner):
            return yielding(inner) if inspect.isasyncgenfunction(inner) else awaiting(inner)

        serializers = (handler.request_deserializer, handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), *serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), *serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), *serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), *serializers)
        return handler
