"""deploy/grafana/latchkey.json queries only metrics the services export, with the labels they carry."""

from __future__ import annotations

import json
import re

from latchkit.settings import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy/grafana/latchkey.json"
METRIC = re.compile(r"\b([a-z_]+)\{")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def exported() -> str:
    """Every metric name the code declares is a string literal in one of these files."""
    files = [*REPO_ROOT.glob("latchkit/*.py"), *REPO_ROOT.glob("services/**/*.py")]
    return "\n".join(f.read_text() for f in files)


def test_every_queried_metric_is_exported():
    code = exported()
    names = {m for q in queries() for m in METRIC.findall(q)}
    assert names
    for name in sorted(names):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
        assert f'"{base}"' in code or f'"{name}"' in code, f"{name} is not declared by any service"


def test_grpc_panels_use_the_standard_labels():
    labels = {"grpc_service", "grpc_method", "grpc_type", "grpc_code"}
    grpc = [q for q in queries() if "grpc_server_" in q]
    assert grpc
    used = {label for q in grpc for label in re.findall(r"\b(grpc_[a-z]+)\b", q) if not label.startswith("grpc_server")}
    assert used <= labels, used - labels
