"""The write bound: the write floor's transaction behind a gRPC method.

`Grant` takes a GrantAccessRequest and runs bench/write_floor.py's GrantAccess
transaction (the same statements in the same four round trips, the same two
events) on one psycopg connection, and answers a GrantAccessResponse with the
revision. It runs on the same runner, TLS and interceptor as the services and
the echo floor, and does nothing else: no validation, no write queue, no use case.

So against the floor it shows what a gRPC front in this runtime costs one write
before any of the permissions service's own work (the echo's round trip, and the
same statements sent from a process that also serves gRPC); GrantAccess against
it shows what the service itself adds.
"""

from __future__ import annotations

import asyncio
import os

import grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from bench.echo_server import floor_settings
from bench.write_floor import WriteFloor
from latchkit import server

GRANT = "/latchkey.bench.WriteBound/Grant"


def registrar(floor: WriteFloor):
    lock = asyncio.Lock()  # one connection: one transaction at a time (the bench calls it with one writer)

    async def grant(request: bytes, context) -> bytes:
        asked = pm.GrantAccessRequest.FromString(request)
        async with lock:
            revision = await floor.grant(asked.grant.user_id, asked.grant.door_id)
        return pm.GrantAccessResponse(grant=asked.grant, revision=revision).SerializeToString()

    def register(srv) -> list[str]:
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "latchkey.bench.WriteBound", {"Grant": grpc.unary_unary_rpc_method_handler(grant)}),))
        return []
    return register


async def main() -> None:
    floor = await WriteFloor.connect(os.environ["LATCHKEY_POSTGRES_DSN"])
    try:
        await server.serve_forever(floor_settings(), server.ServiceSpec(name="write-bound",
                                                                       register=registrar(floor)))
    finally:
        await floor.close()


if __name__ == "__main__":
    server.run(main)
