"""When tracing is on, and what the first answer after a change adds to that change's trace."""

from __future__ import annotations

import pytest

from latchkit import tracing

ENDPOINT = "http://127.0.0.1:4317"


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
])
def test_tracing_is_on_only_with_an_endpoint_and_not_turned_off(env, on):
    assert tracing.wanted(env) is on


@pytest.fixture
def tracing_service() -> str:
    return "access"


async def test_the_first_answer_from_a_change_ends_its_trace_once(collector):
    sight = tracing.FirstSight()
    # A change of one key at revision 7 arrives in a trace (the feed's consumer span).
    with tracing.span("feed", kind="CONSUMER") as feed:
        sight.remember(("door", "user"), 7, tracing.current_context())
    # An answer from an older view does not count; the first at revision 7 or later does, once.
    with tracing.span("unlock", kind="SERVER") as unlock:
        assert sight.seen(("door", "user"), 6) is False
        assert sight.seen(("door", "user"), 8) is True
        assert sight.seen(("door", "user"), 9) is False
    spans = await collector.wait_for(lambda s: any(x.name == "access.first_unlock" for x in s),
                                     "the first-unlock span")
    (first,) = [s for s in spans if s.name == "access.first_unlock"]
    feed_ctx, unlock_ctx = feed.get_span_context(), unlock.get_span_context()
    # In the change's trace, under the feed's span, linked to the Unlock that saw it.
    assert first.trace_id == f"{feed_ctx.trace_id:032x}" and first.parent_span_id == f"{feed_ctx.span_id:016x}"
    assert first.links == ((f"{unlock_ctx.trace_id:032x}", f"{unlock_ctx.span_id:016x}"),)
    assert first.attributes == {"latchkey.view_revision": 8, "latchkey.event_revision": 7}
