"""ScyllaDB connection settings and the asyncio bridge shared by the Scylla adapters.

Nothing connects at import time; `connect` is called by an adapter's `open`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from latchkit.settings import env_list, env_str


@dataclass(frozen=True)
class ScyllaSettings:
    hosts: tuple[str, ...]
    """LATCHKEY_SCYLLA_HOSTS: comma-separated contact points; empty means no Scylla."""
    keyspace: str
    """LATCHKEY_SCYLLA_KEYSPACE (default latchkey)."""
    local_dc: str
    """LATCHKEY_SCYLLA_LOCAL_DC: the data centre whose replicas LOCAL_QUORUM counts."""

    @classmethod
    def from_env(cls) -> ScyllaSettings:
        return cls(env_list("LATCHKEY_SCYLLA_HOSTS"), env_str("LATCHKEY_SCYLLA_KEYSPACE", "latchkey"),
                   env_str("LATCHKEY_SCYLLA_LOCAL_DC", "datacenter1"))


def connect(settings: ScyllaSettings):
    """A driver Session whose default consistency is LOCAL_QUORUM (the driver's default is LOCAL_ONE)."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc)),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM, request_timeout=2.0,
    )
    cluster = Cluster(list(settings.hosts), execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    return cluster, cluster.connect()


async def pages(session, statement, params=None):
    """Yield each page of rows; the next page is fetched asynchronously, never by iterating a ResultSet.

    The driver calls the callbacks on its own threads, once per page, so they
    only hand the page to the event loop (`call_soon_threadsafe`).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    response = session.execute_async(statement, params)
    response.add_callbacks(lambda rows: loop.call_soon_threadsafe(queue.put_nowait, (rows, None)),
                           lambda exc: loop.call_soon_threadsafe(queue.put_nowait, (None, exc)))
    while True:
        rows, exc = await queue.get()
        if exc is not None:
            raise exc
        yield rows
        if not response.has_more_pages:
            return
        response.start_fetching_next_page()


async def execute(session, statement, params=None) -> list:
    """All rows of a statement (for small results: a partition key lookup, a write)."""
    result = []
    async for page in pages(session, statement, params):
        result.extend(page)
    return result
