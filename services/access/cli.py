"""`latchkey access ...`: the view's schema and its rebuild."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.progress import Progress

app = typer.Typer(help="The access service's unlock view.", no_args_is_help=True)
console = Console()


@app.command("migrate-cql")
def migrate_cql(replication_factor: int = typer.Option(3, "--rf", help="replicas per data centre")) -> None:
    """Create the unlock view's keyspace and tables on LATCHKEY_SCYLLA_HOSTS, or bring them in line with the
    CQL files (replication, TTL, compaction); prints each change, or "unchanged"."""
    from latchkit.scylla import ScyllaSettings
    from services.access.adapters.scylla_view import apply_schema

    settings = ScyllaSettings.from_env()
    if not settings.hosts:
        raise typer.BadParameter("set LATCHKEY_SCYLLA_HOSTS to the cluster's contact points")
    changes = asyncio.run(apply_schema(settings, replication_factor))
    for change in changes:
        console.print(change, soft_wrap=True, markup=False)
    if not changes:
        console.print(f"unchanged: keyspace {settings.keyspace} already matches the CQL files")


@app.command("rebuild-view")
def rebuild_view() -> None:
    """Repopulate the unlock view and Redis from the permissions service's access snapshot
    (LATCHKEY_PERMISSIONS_TARGET, as the access service's identity); Unlock keeps serving meanwhile."""
    from latchkey.permissions.v1 import permissions_pb2_grpc

    from latchkit import endpoints
    from latchkit.tls import secure_channel
    from services.access import bootstrap
    from services.access.adapters.redis_cache import RedisUnlockCache
    from services.access.rebuild import rebuild
    from services.access.settings import AccessSettings

    async def main() -> dict:
        settings = AccessSettings.from_env()
        view = bootstrap.build_view(settings)
        await view.open()
        cache = RedisUnlockCache(settings.redis_url, settings.cache_ttl_seconds, settings.negative_ttl_seconds)
        # The access service's own certificate: the identity the snapshot is exported to.
        channel = secure_channel(endpoints.PERMISSIONS.target, settings.server.tls)
        try:
            with Progress(console=console) as bar:
                task = bar.add_task("rebuilding the unlock view", total=None)
                return await rebuild(permissions_pb2_grpc.PermissionsServiceStub(channel), view, cache,
                                     lambda done, total: bar.update(task, completed=done, total=total))
        finally:
            await channel.close()
            await cache.close()
            await view.close()

    result = asyncio.run(main())
    console.print(f"view rebuilt at revision {result['revision']}: {result['pairs']} pairs, "
                  f"{result['credentials']} credentials, {result['tombstoned']} stale pairs closed")
