"""One trace from a gRPC call through a JetStream message to its consumer, exported by OTLP.

An in-process server (the runner, with its interceptor) whose handler
publishes on the test stack's NATS; a consumer fetches the message and
processes it in a consumer span. A real OTLP/gRPC receiver collects what the
SDK exports.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from latchkit import bus, server, tracing
from latchkit.settings import ServerSettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"




@pytest.fixture
def js(scratch_stream):
    return scratch_stream


@pytest.fixture
async def probe(pki, js):
    """A server with one method that publishes the request's bytes and answers with nothing."""
    jetstream, stream = js
    subject = f"{stream.lower()}.event"

    async def publish(request: bytes, context) -> bytes:
        with bus.publish_span(subject, {"Nats-Msg-Id": uuid.uuid4().hex}) as headers:
            await jetstream.publish(subject, request, headers=headers)
        return b""

    async def fail(request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.INTERNAL, "failed on purpose")

    def register(srv) -> tuple[str, ...]:
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("latchkey.probe.v1.Probe", {
            "Publish": grpc.unary_unary_rpc_method_handler(publish),
            "Fail": grpc.unary_unary_rpc_method_handler(fail)}),))
        return ()

    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5,
                              max_message_bytes=64 * 1024, tls=pki.tls("permissions"))
    running = await server.start(settings, server.ServiceSpec(name="probe", register=register))
    yield running, stream, subject
    await running.stop(0.5)


def _channel(port: int, pki) -> grpc.aio.Channel:
    t = pki.tls("admin")
    creds = grpc.ssl_channel_credentials(t.ca_file.read_bytes(), t.key_file.read_bytes(), t.cert_file.read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def _call_and_consume(probe, js, pki, metadata=()) -> None:
    running, stream, subject = probe
    jetstream, _ = js
    async with _channel(running.port, pki) as ch:
        await ch.unary_unary("/latchkey.probe.v1.Probe/Publish")(b"payload", metadata=metadata, timeout=5)
    # The consumer side: fetch the message and process it in a consumer span.
    sub = await jetstream.pull_subscribe(subject, durable=f"c{uuid.uuid4().hex[:8]}", stream=stream)
    (msg,) = await sub.fetch(1, timeout=5)
    with bus.consumer_span("probe.consume", msg):
        await msg.ack()


async def test_one_trace_runs_from_server_span_through_publish_to_consumer_span(collector, probe, js, pki):
    # A caller without a trace: the server span starts one, the publish and the consumer continue it.
    await _call_and_consume(probe, js, pki)
    spans = await collector.wait_for(
        lambda s: {"latchkey.probe.v1.Probe/Publish", "probe.consume"} <= {x.name for x in s},
        "the server span and the consumer span")
    by_name = {s.name: s for s in spans}
    rpc, consume = by_name["latchkey.probe.v1.Probe/Publish"], by_name["probe.consume"]
    publish = next(s for s in spans if s.kind == "PRODUCER")
    # One trace; each span the child of the one before it.
    assert rpc.trace_id == publish.trace_id == consume.trace_id
    assert rpc.parent_span_id == ""
    assert publish.parent_span_id == rpc.span_id
    assert consume.parent_span_id == publish.span_id
    # The server span says what was called and how it ended, under the service's name.
    assert rpc.kind == "SERVER" and rpc.service == "latchkey-probe"
    assert rpc.attributes == {"rpc.system": "grpc", "rpc.service": "latchkey.probe.v1.Probe",
                              "rpc.method": "Publish", "rpc.grpc.status_code": 0}
    assert consume.kind == "CONSUMER" and consume.attributes["messaging.nats.stream_sequence"] == 1


async def test_server_span_continues_the_callers_traceparent(collector, probe, js, pki):
    # The caller sends a W3C traceparent in its metadata: the whole chain joins the caller's trace.
    await _call_and_consume(probe, js, pki, metadata=(("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),))
    spans = await collector.wait_for(lambda s: any(x.name == "probe.consume" for x in s), "the consumer span")
    rpc = next(s for s in spans if s.kind == "SERVER")
    assert rpc.trace_id == TRACE_ID and rpc.parent_span_id == CALLER_SPAN_ID
    assert {s.trace_id for s in spans} == {TRACE_ID}


async def test_a_failing_call_is_traced_with_its_status(collector, probe, pki):
    # A handler that fails: the span carries gRPC's status code and is marked an error.
    running, _, _ = probe
    async with _channel(running.port, pki) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ch.unary_unary("/latchkey.probe.v1.Probe/Fail")(b"", timeout=5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    spans = await collector.wait_for(lambda s: any(x.name.endswith("/Fail") for x in s), "the failed call's span")
    (span,) = [s for s in spans if s.name.endswith("/Fail")]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert span.status_code == 2  # STATUS_CODE_ERROR


async def test_tracing_off_leaves_headers_alone_and_makes_no_spans():
    # Off (no endpoint): the helpers hand back what they were given and build nothing.
    tracing.configure("probe", {})
    assert tracing.ENABLED is False
    assert bus.inject_headers(None) is None
    headers = {"Nats-Msg-Id": "x"}
    assert bus.inject_headers(headers) is headers
    with bus.publish_span("s", headers) as published:
        assert published is headers
    assert bus.extract_context({"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"}) is None
