"""A real OTLP/gRPC trace receiver on a free port: what services export to, collected for assertions.

It implements the collector's TraceService `Export` with grpc.aio (plain TCP,
like a collector's sidecar port); tests read the spans it received. Run as a
module (`python -m tests.otlp_collector PORT`) it only counts spans: the
benchmark's sink when it measures Unlock with tracing on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    status_code: int


def _value(any_value):
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._received = asyncio.Condition()

    async def Export(self, request, context):  # noqa: N802 - the generated servicer's name
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.count += len(scope_spans.spans)
                if not self.keep:
                    continue
                for s in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        service=resource.get("service.name", ""), name=s.name, kind=KINDS.get(s.kind, str(s.kind)),
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        status_code=s.status.code))
        async with self._received:
            self._received.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def start(self, port: int = 0) -> int:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return self.port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)

    async def wait_for(self, predicate, what: str, limit_s: float = 20.0) -> list[ReceivedSpan]:
        """Wait (bounded) until `predicate(spans)` holds; returns the spans."""
        async with self._received:
            try:
                await asyncio.wait_for(self._received.wait_for(lambda: predicate(self.spans)), limit_s)
            except TimeoutError:
                names = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"timed out waiting for {what}; received {names}") from None
        return self.spans


async def _serve_counting(port: int) -> None:
    collector = Collector(keep=False)
    await collector.start(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await collector.stop()
    print(f"otlp sink received {collector.count} spans", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(_serve_counting(int(sys.argv[1])))
