"""Unlock's lower bounds: what any Unlock costs before it decides anything.

Two methods on the same runner, TLS and interceptor as the echo floor:

- `Answer` takes an UnlockRequest, checks its request_id as Unlock does, and
  returns an UnlockResponse built the way Unlock builds a grant (a fresh
  decision id and server time), deciding nothing;
- `AnswerAndRecord` does the same and records the decision's event exactly as
  Unlock does: `DecisionPublisher.record_deferred` with Unlock's `encode_decision`,
  its batching, to the same JetStream stream, and answers when Unlock would: in
  the default durability mode (`LATCHKEY_ACCESS_DECISION_DURABILITY`, acked)
  once the event is acknowledged by JetStream or spooled, as Unlock does.

Against the echo floor they split Unlock's gap into what the issue's required
parts cost (the service's messages, one event per decision) and what Unlock's
own work costs (validation, identity, lookups, the decision). The events name a
door of their own, so the bench's decision-time figures never count them.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev

from access_rules.rules import Reason
from bench.echo_server import floor_settings
from latchkit import envelope, server
from latchkit.bus import BusSettings
from latchkit.errors import InvalidArgument, abort
from services.access import ids
from services.access.adapters.sqlite_spool import SqliteDecisionSpool
from services.access.decisions import DecisionPublisher, wait_durable
from services.access.service import check_id, encode_decision
from services.access.settings import decision_durability

SERVICE = "latchkey.bench.Bound"
ANSWER = f"/{SERVICE}/Answer"
ANSWER_AND_RECORD = f"/{SERVICE}/AnswerAndRecord"


def register(decisions: DecisionPublisher):
    sequence = ids.Sequence()
    door_id, user_id, credential_id = (str(uuid.uuid4()) for _ in range(3))
    actor = f"spiffe://latchkey/door/{door_id}"
    subject = envelope.decision_subject(door_id)
    granted, reason = ev.DECISION_GRANTED, int(Reason.GRANTED)

    def answer() -> tuple[access_pb2.UnlockResponse, str, int, int]:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        decision_id = sequence.next()
        response = access_pb2.UnlockResponse(decision=granted, reason=reason, decision_id=decision_id,
                                             view_revision=1, user_id=user_id)
        server_time = response.server_time
        server_time.seconds, server_time.nanos = seconds, nanos
        return response, decision_id, seconds, nanos

    async def answer_only(request, context):
        try:
            check_id(request.request_id, "request_id")
        except InvalidArgument as exc:
            await abort(context, exc)
        return answer()[0]

    async def answer_and_record(request, context):
        started = time.perf_counter_ns()
        try:
            check_id(request.request_id, "request_id")
        except InvalidArgument as exc:
            await abort(context, exc)
        response, decision_id, seconds, nanos = answer()
        durable = decisions.record_deferred(decision_id, subject, encode_decision, (
            decision_id, actor, door_id, user_id, credential_id, request.request_id, granted, reason, 1,
            seconds, nanos, time.perf_counter_ns() - started, None))
        if durable is not None:
            # As Unlock: the answer waits for its decision to be durable, within the deadline.
            remaining = context.time_remaining()
            await wait_durable(durable, None if remaining is None else asyncio.get_running_loop().time() + remaining)
        return response

    def handler(behaviour):
        return grpc.unary_unary_rpc_method_handler(behaviour, access_pb2.UnlockRequest.FromString,
                                                   access_pb2.UnlockResponse.SerializeToString)

    def add(srv) -> list[str]:
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Answer": handler(answer_only), "AnswerAndRecord": handler(answer_and_record)}),))
        return []

    return add


async def main() -> None:
    spool_dir = Path(tempfile.mkdtemp(prefix="lk-bench-bound-"))
    decisions = DecisionPublisher(SqliteDecisionSpool(spool_dir / "decisions.sqlite"), BusSettings.from_env(),
                                  durability=decision_durability())

    async def stop() -> None:
        await decisions.close()
        shutil.rmtree(spool_dir, ignore_errors=True)

    await server.serve_forever(floor_settings(), server.ServiceSpec(
        name="bound", register=register(decisions), on_stop=stop,
        background=[decisions.run_spiller, decisions.run_publisher]))


if __name__ == "__main__":
    server.run(main)
