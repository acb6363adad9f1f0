"""`latchkey migrate` for audit: the audit store's CQL schema, when the environment asks for it.

Applied only with LATCHKEY_SCYLLA_HOSTS and LATCHKEY_SCYLLA_REPLICATION_FACTOR
set (the local stack's CQL engine sets both); production applies it with
`latchkey audit migrate-cql --rf N`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from latchkit.scylla import ScyllaSettings, migration_replication_factor
from services.audit.settings import DEFAULT_RETENTION_DAYS


def upgrade(env: Mapping[str, str]) -> None:
    settings = ScyllaSettings.from_env(env)
    rf = migration_replication_factor(env)
    if not settings.hosts or rf is None:
        return
    from services.audit.adapters.scylla_store import apply_schema

    retention_days = int(env.get("LATCHKEY_AUDIT_RETENTION_DAYS") or DEFAULT_RETENTION_DAYS)
    for line in asyncio.run(apply_schema(settings, replication_factor=rf, retention_days=retention_days)):
        print(f"audit CQL: {line}")
