"""Unlock's per-source counter is exported as the Prometheus counter it always was."""

from prometheus_client import REGISTRY, generate_latest

from services.access import service


def test_each_source_counts_under_its_label():
    name = "latchkey_access_unlock_answered_from_total"
    before = {s: REGISTRY.get_sample_value(name, {"source": s}) for s in ("memory", "redis", "view")}
    service.FROM_MEMORY.inc()
    service.FROM_MEMORY.inc()
    service.FROM_VIEW.inc()
    after = {s: REGISTRY.get_sample_value(name, {"source": s}) for s in ("memory", "redis", "view")}
    assert {s: after[s] - before[s] for s in after} == {"memory": 2, "redis": 0, "view": 1}
    text = generate_latest(REGISTRY).decode()
    assert f"# TYPE {name} counter" in text
    assert f'{name}{{source="memory"}} {after["memory"]}' in text
