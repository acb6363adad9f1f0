"""The seed design's first answer: Unlock decided by querying PostgreSQL inside the RPC handler."""

from __future__ import annotations

import datetime as dt
import os

from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import Reason, evaluate
from bench.echo_server import floor_settings
from latchkit import secret_hash, server
from latchkit.errors import handles_errors
from services.access.service import check_id
from services.permissions import effective
from services.permissions.adapters.postgres import Database


class PgUnlock(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self.key = key

    @handles_errors
    async def Unlock(self, request, context):
        check_id(request.request_id, "request_id")  # required, as Unlock requires it
        now = dt.datetime.now(dt.UTC)
        async with self.db.read() as uow:
            user_id = request.user_id
            if request.HasField("credential"):
                digest = secret_hash.hash_secret(self.key, request.credential.kind, request.credential.secret)
                row = await uow.row("SELECT user_id::text AS u, revoked FROM credentials WHERE kind = :k AND "
                                    "secret_hash = :h ORDER BY revoked LIMIT 1", k=request.credential.kind, h=digest)
                if row is None or row["revoked"]:
                    reason = Reason.UNKNOWN_CREDENTIAL if row is None else Reason.CREDENTIAL_REVOKED
                    return access_pb2.UnlockResponse(decision=ev.DECISION_DENIED, reason=int(reason))
                user_id = row["u"]
            access = await effective.pair_access(uow.store, {(request.door_id, user_id)})
        verdict = evaluate(access[(request.door_id, user_id)], now)
        return access_pb2.UnlockResponse(decision=ev.DECISION_GRANTED if verdict.granted else ev.DECISION_DENIED,
                                         reason=int(verdict.reason), user_id=user_id)


async def main() -> None:
    db = Database(os.environ["LATCHKEY_POSTGRES_DSN"], pool_size=32)

    def register(srv) -> list[str]:
        access_pb2_grpc.add_AccessServiceServicer_to_server(PgUnlock(db, secret_hash.load_hmac_key()), srv)
        return []

    await server.serve_forever(floor_settings(), server.ServiceSpec(name="pg-unlock", register=register, on_stop=db.close))


if __name__ == "__main__":
    server.run(main)
