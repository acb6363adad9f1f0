"""Applying versioned CQL files (`<service>/cql/NNN_*.cql`) to a Scylla cluster, in order, idempotently."""

from __future__ import annotations

from pathlib import Path

from latchkit.scylla import ScyllaSettings, connect


def statements(path: Path, **values) -> list[str]:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in text.format(**values).split(";") if s.strip()]


def apply_files(directory: Path, settings: ScyllaSettings, **values) -> list[str]:
    """Every statement is CREATE ... IF NOT EXISTS, so running again changes nothing."""
    cluster, session = connect(settings)
    applied = []
    try:
        for path in sorted(directory.glob("*.cql")):
            for statement in statements(path, keyspace=settings.keyspace, dc=settings.local_dc, **values):
                session.execute(statement, timeout=60)
            applied.append(path.name)
    finally:
        cluster.shutdown()
    return applied
