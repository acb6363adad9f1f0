"""A PostgreSQL restart under a running permissions service costs at most the writes in flight.

The pool keeps connections open; a restart leaves every one of them dead. Each is
checked before use, so the first write after the restart already succeeds instead of
one write failing per stale pooled connection.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid

from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from devstack.stack import Stack, StackPorts
from latchkit.settings import REPO_ROOT
from tests.integration.conftest import aio_channel, fresh_database, start_permissions


async def create_user(admin, name: str) -> pm.CreateUserResponse:
    return await admin.CreateUser(pm.CreateUserRequest(request_id=uuid.uuid4().hex, user=pm.User(display_name=name)),
                                  timeout=30)


async def test_writes_after_a_database_restart_all_succeed(urls, pki):
    # A private PostgreSQL (the session's is shared by every test and must keep running);
    # it runs as the postgres user, so its directory is under .state rather than /tmp.
    stack = Stack(REPO_ROOT / ".state" / f"test-pg-{uuid.uuid4().hex[:8]}", StackPorts.free())
    stack.state_dir.mkdir(parents=True)
    running = service = None
    try:
        stack.start_component("postgres")
        dsn = fresh_database(stack.urls())
        service, running = await start_permissions(urls, pki, relay=False, dsn=dsn)
        async with aio_channel(service.port, pki.tls("admin")) as channel:
            admin = permissions_pb2_grpc.PermissionsServiceStub(channel)
            # Concurrent writes fill the pool: each waits for the revision lock on a connection of its own.
            await asyncio.gather(*(create_user(admin, f"before {i}") for i in range(20)))

            # PostgreSQL restarts with nothing in flight; every pooled connection is now dead.
            await asyncio.to_thread(stack.stop_component, "postgres")
            await asyncio.to_thread(stack.start_component, "postgres")

            # Every write after the restart succeeds, the first one included, and in order.
            revisions = [(await create_user(admin, f"after {i}")).revision for i in range(25)]
            assert revisions == sorted(revisions) and len(set(revisions)) == 25
    finally:
        if running is not None:
            await running.stop(0.5)
            await service.app.db.close()
        await asyncio.to_thread(stack.stop_component, "postgres")
        shutil.rmtree(stack.state_dir, ignore_errors=True)
