"""OpenTelemetry tracing: off unless an OTLP endpoint is configured, and free when off.

`configure(service)` is called once per process at start-up (each access
worker is a process of its own and calls it too). Tracing is ON only when the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
is set, and not turned off by `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`. Spans go to that endpoint by OTLP gRPC through a
batching processor; the resource's `service.name` is `latchkey-<service>`.

Off, nothing from OpenTelemetry is imported and every hook (the interceptor,
the bus helpers) tests the one module-level boolean `ENABLED` and does nothing
else. The trace context crosses processes as W3C `traceparent`/`tracestate`:
in gRPC metadata and in JetStream message headers (`latchkit.bus`).

The provider is this module's own (not OpenTelemetry's process-global one),
so a test can configure it again and libraries that trace by themselves stay
silent.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("latchkit.tracing")

ENABLED = False
"""The hot path's only question. True once `configure` has installed a provider."""

_provider: Any = None
_tracer: Any = None
_propagator: Any = None
_TRUE = {"1", "true", "yes", "on"}
# gRPC status codes that are the server's fault: the span's status is ERROR for them only.
_SERVER_ERRORS = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing (an endpoint, and not turned off)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "none" in exporters:
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install this process's tracer provider if the environment asks for one; returns ENABLED.

    Called again (a test, a new endpoint), the previous provider is flushed and replaced.
    """
    global ENABLED, _provider, _tracer, _propagator
    if not wanted(env):
        shutdown()
        return False
    env = os.environ if env is None else env
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    shutdown()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    provider = TracerProvider(resource=Resource.create({"service.name": f"latchkey-{service}"}))
    # The exporter reads the rest of the standard OTEL_EXPORTER_OTLP_* settings (TLS, headers, timeout).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider = provider
    _tracer = provider.get_tracer("latchkit")
    _propagator = TraceContextTextMapPropagator()
    ENABLED = True
    log.info("tracing on", extra={"service": f"latchkey-{service}", "endpoint": endpoint})
    return True


def shutdown(flush_ms: int = 2000) -> None:
    """Send what is buffered (waiting at most `flush_ms`) and turn tracing off (a stopping process, a test).

    Bounded: a collector that is down must not hold a stopping service for the exporter's
    whole retry budget.
    """
    global ENABLED, _provider, _tracer
    ENABLED = False
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.force_flush(flush_ms)
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every ended span now (tests, and a process about to exit without atexit)."""
    return _provider.force_flush(timeout_ms) if _provider is not None else True


def tracer():
    return _tracer


# ---- propagation ------------------------------------------------------------

def inject(carrier: dict | None = None, context=None) -> dict:
    """`carrier` (a new dict if None) with the current (or given) context's traceparent added."""
    carrier = {} if carrier is None else carrier
    _propagator.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None):
    """The context a carrier's traceparent names; an empty context when it names none."""
    return _propagator.extract(carrier or {})


def extract_metadata(metadata: Iterable[tuple[str, Any]] | None):
    """The context carried in gRPC invocation metadata (keys arrive lower-case)."""
    carrier = {}
    for key, value in metadata or ():
        if key in ("traceparent", "tracestate") and isinstance(value, str):
            carrier[key] = value
    return _propagator.extract(carrier)


# ---- spans ------------------------------------------------------------------

def start_server_span(metadata, rpc_service: str, rpc_method: str):
    """Start and make current the server span of one RPC; returns (span, token) for `end_server_span`."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    parent = extract_metadata(metadata)
    span = _tracer.start_span(
        f"{rpc_service}/{rpc_method}", context=parent, kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": rpc_service, "rpc.method": rpc_method},
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span, token, code) -> None:
    """End a server span with its gRPC status (a grpc.StatusCode)."""
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
    try:
        otel_context.detach(token)
    except ValueError:
        # A streaming handler closed from another context (a cancelled follow): nothing to restore.
        pass


@contextmanager
def span(name: str, *, kind: str = "INTERNAL", parent=None, links: Iterable = (),
         attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span made current for the block (child of `parent`, a Context, if given). Tracing must be on."""
    from opentelemetry import trace

    with _tracer.start_as_current_span(name, context=parent, kind=getattr(trace.SpanKind, kind),
                                       links=list(links), attributes=attributes) as current:
        yield current


def link_to(context) -> Any | None:
    """A span link to the span a context holds, or None if it holds none (no traceparent came)."""
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


def current_traceparent() -> str | None:
    """The current span's W3C traceparent (to keep with an event published later), or None (off)."""
    return inject({}).get("traceparent") if ENABLED else None


def current_context():
    """The current context (to hand to another task, e.g. a record kept for later)."""
    from opentelemetry import context as otel_context

    return otel_context.get_current()


class FirstSight:
    """Traces waiting for the first answer that reflects them, kept per key (bounded).

    The access service remembers, per view key, the context of the bus event
    that changed it (`remember`); the first Unlock answered from that change or
    a later one (`seen`) adds a span to that event's trace, so one trace runs
    from the write to the first door that saw it, and links it to the Unlock's
    own trace.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._pending: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self._limit = limit

    def remember(self, key, revision: int, context) -> None:
        self._pending[key] = (revision, context)
        self._pending.move_to_end(key)
        while len(self._pending) > self._limit:
            self._pending.popitem(last=False)

    def seen(self, key, revision: int, name: str = "access.first_unlock") -> bool:
        """If `key` has a pending trace at or below `revision`, end it with a span; returns whether it did."""
        pending = self._pending.get(key)
        if pending is None or pending[0] > revision:
            return False
        del self._pending[key]
        from opentelemetry import trace

        unlock = trace.get_current_span().get_span_context()
        links = [trace.Link(unlock)] if unlock.is_valid else []
        with _tracer.start_as_current_span(name, context=pending[1], links=links,
                                           attributes={"latchkey.view_revision": revision,
                                                       "latchkey.event_revision": pending[0]}):
            pass
        return True
