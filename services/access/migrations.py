"""`latchkey migrate` for access: the unlock view's CQL schema, when the environment asks for it.

Applied only with LATCHKEY_SCYLLA_HOSTS and LATCHKEY_SCYLLA_REPLICATION_FACTOR
set (the local stack's CQL engine sets both); production applies it with
`latchkey access migrate-cql --rf N`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from latchkit.scylla import ScyllaSettings, migration_replication_factor


def upgrade(env: Mapping[str, str]) -> None:
    settings = ScyllaSettings.from_env(env)
    rf = migration_replication_factor(env)
    if not settings.hosts or rf is None:
        return
    from services.access.adapters.scylla_view import apply_schema

    for line in asyncio.run(apply_schema(settings, replication_factor=rf)):
        print(f"access CQL: {line}")
