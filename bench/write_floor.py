"""The floor for a permissions write: one GrantAccess's SQL by a bare psycopg client, no gRPC, no service.

GrantAccess of a user to a door is one transaction of four round trips
(services/permissions/adapters/postgres.py and postgres_store.py): BEGIN with
the revision counter's UPDATE; the grant's INSERT (its foreign keys check the
user and the door); the pair's rules and its user's and door's state (one
query); the outbox rows with the relay's NOTIFY and COMMIT. This client sends
the same statements (the service's own SQL text where it is a constant) on
one connection in autocommit mode, as the service drives its transaction, and
writes the same two events, so the relay and the access service see ordinary
grants. What it leaves out is what the service adds: gRPC, TLS, validation,
the connection pool and its pre-ping, the use case's bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
from latchkey.events.v1 import events_pb2 as ev
from psycopg.rows import dict_row

from access_rules.codec import to_event
from access_rules.rules import PairAccess, Rule
from latchkit import envelope
from services.permissions.adapters.postgres import BEGIN_AND_TAKE_REVISION, OUTBOX_INSERT, _pyformat
from services.permissions.adapters.postgres_store import ACCESS_SQL, INSERT_GRANT

ACTOR = "spiffe://latchkey/role/admin"


class WriteFloor:
    """One connection; `grant(user_id, door_id)` is one GrantAccess's transaction."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> WriteFloor:
        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def close(self) -> None:
        await self.conn.close()

    async def grant(self, user_id: str, door_id: str) -> int:
        """Commit a grant; its revision."""
        try:
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(BEGIN_AND_TAKE_REVISION)  # round trip 1
                cur.nextset()
                revision = _required(await cur.fetchone())["revision"]
                await cur.execute(_pyformat(INSERT_GRANT), {  # round trip 2: to a user, no schedule
                    "g": str(uuid.uuid4()), "u": user_id, "gr": "", "d": door_id, "vf": None, "vu": None,
                    "s": "", "t": dt.datetime.now(dt.UTC)})
                grant = _required(await cur.fetchone())
                await cur.execute(_pyformat(ACCESS_SQL), {"users": [user_id], "doors": [door_id]})  # 3
                facts = await cur.fetchall()
            events = [(ev.GrantChanged(grant_id=grant["grant_id"], user_id=user_id, door_id=door_id),
                       f"grant/{grant['grant_id']}"),
                      (to_event(door_id, user_id, _pair_access(facts)), f"access/{door_id}/{user_id}")]
            envs = [envelope.build(payload, actor=ACTOR, aggregate_key=key, aggregate_version=revision,
                                   revision=revision, revision_event_index=i, revision_event_count=len(events))
                    for i, (payload, key) in enumerate(events)]
            async with psycopg.AsyncClientCursor(self.conn) as cur:  # round trip 4
                await cur.execute(_pyformat(OUTBOX_INSERT) + "; COMMIT", {
                    "revision": revision, "idx": list(range(len(envs))),
                    "event_ids": [e.event_id for e in envs], "subjects": [envelope.subject(e) for e in envs],
                    "payloads": [e.SerializeToString() for e in envs], "traceparents": [None] * len(envs)})
        except BaseException:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await self.conn.execute("ROLLBACK")
            raise
        return revision


def _required(row: dict | None) -> dict:
    if row is None:
        raise RuntimeError("a RETURNING statement returned no row")
    return row


def _pair_access(facts: list[dict]) -> PairAccess:
    """The pair's AccessChanged content from ACCESS_SQL's rows (direct grants, no schedule here)."""
    rules = tuple(sorted((Rule(grant_id=r["grant_id"], via_group_id=r["via"], valid_from=r["valid_from"],
                               valid_until=r["valid_until"], schedule_id=r["schedule_id"])
                          for r in facts if r["kind"] == "r"), key=lambda x: (x.grant_id, x.via_group_id)))
    user = next((r for r in facts if r["kind"] == "u"), None)
    door = next((r for r in facts if r["kind"] == "d"), None)
    return PairAccess(rules=rules, user_suspended=bool(user and user["flag"]),
                      door_lockdown=bool(door and door["flag"]), time_zone=door["time_zone"] if door else "UTC",
                      door_max_view_staleness=door["staleness_ms"] / 1000 if door else 0.0)
