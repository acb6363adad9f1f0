"""Unlock's counters: answers by source, and by decision and reason."""

from prometheus_client import REGISTRY, generate_latest

from services.access import lookup, service


def test_each_source_counts_under_its_label():
    name = "latchkey_access_unlock_answered_from_total"
    before = {s: REGISTRY.get_sample_value(name, {"source": s}) for s in ("memory", "redis", "view")}
    lookup.FROM_MEMORY.inc()
    lookup.FROM_MEMORY.inc()
    lookup.FROM_VIEW.inc()
    after = {s: REGISTRY.get_sample_value(name, {"source": s}) for s in ("memory", "redis", "view")}
    assert {s: after[s] - before[s] for s in after} == {"memory": 2, "redis": 0, "view": 1}
    text = generate_latest(REGISTRY).decode()
    assert f"# TYPE {name} counter" in text
    assert f'{name}{{source="memory"}} {after["memory"]}' in text


def test_decisions_count_by_decision_and_reason():
    from latchkey.events.v1 import events_pb2 as ev

    name = "latchkey_access_unlock_decisions_total"
    labels = {"decision": "DENIED", "reason": "STALE_VIEW"}
    before = REGISTRY.get_sample_value(name, labels) or 0
    service._decided(ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW).inc()
    assert REGISTRY.get_sample_value(name, labels) == before + 1
