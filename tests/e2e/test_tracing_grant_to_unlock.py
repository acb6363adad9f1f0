"""One trace from GrantAccess to the first Unlock that sees it; Unlock's trace reaches audit ingest.

The three services run as processes with tracing on, exporting by OTLP/gRPC
to a receiver in this test. They run on a stack of their own: their revisions
start at 1 on empty streams, whatever the other end-to-end tests left there.
"""

from __future__ import annotations

import os
import shutil
import uuid

import grpc
import pytest
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from devstack.stack import Stack, StackPorts
from latchkit.settings import REPO_ROOT
from latchkit.tls import channel_credentials
from tests.otlp_collector import Collector
from tests.system import running_services
from tests.waiting import until


def traceparent() -> tuple[str, str]:
    """A new W3C traceparent (sampled) and its trace id."""
    trace_id = uuid.uuid4().hex
    return f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", trace_id


def in_trace(span, trace_id: str) -> bool:
    """In that trace, or (a span for a batch of messages) linked to it."""
    return span.trace_id == trace_id or any(t == trace_id for t, _ in span.links)


@pytest.fixture(scope="module")
async def collector():
    received = Collector()
    await received.start()
    yield received
    await received.stop()


@pytest.fixture(scope="module")
def traced_system(collector, pki):
    """Permissions, access and audit on a private stack, each exporting spans to `collector`."""
    stack = Stack(REPO_ROOT / ".state" / f"test-tracing-{uuid.uuid4().hex[:8]}", StackPorts.free())
    urls = stack.up(cql=False)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LATCHKEY_SCYLLA_", "OTEL_"))},
        "LATCHKEY_STATE_DIR": str(stack.state_dir / "services"),
        "LATCHKEY_CERTS_DIR": str(pki.dir),
        "LATCHKEY_POSTGRES_DSN": urls.postgres_dsn,
        "LATCHKEY_REDIS_URL": urls.redis_url,
        "LATCHKEY_NATS_URL": urls.nats_url,
        "LATCHKEY_ACCESS_WORKERS": "1",
        "LATCHKEY_LOG_LEVEL": "WARNING",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not the default 5 s
    }
    try:
        with running_services(env, pki) as (targets, _):
            yield targets
    finally:
        stack.down()
        shutil.rmtree(stack.state_dir, ignore_errors=True)


def channel(target: str, tls) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, channel_credentials(tls))


async def test_one_trace_spans_grant_access_to_the_first_unlock_that_sees_it(traced_system, collector, pki):
    async with channel(traced_system["permissions"], pki.tls("admin")) as pch:
        admin = permissions_pb2_grpc.PermissionsServiceStub(pch)
        door = (await admin.CreateDoor(pm.CreateDoorRequest(request_id=uuid.uuid4().hex, door=pm.Door(
            name="Traced", time_zone="UTC")), timeout=10)).door
        user = (await admin.CreateUser(pm.CreateUserRequest(request_id=uuid.uuid4().hex, user=pm.User(
            display_name="Ada")), timeout=10)).user
        # The grant, in a trace the test chose (its traceparent in the call's metadata).
        grant_parent, grant_trace = traceparent()
        granted = await admin.GrantAccess(pm.GrantAccessRequest(request_id=uuid.uuid4().hex, grant=pm.Grant(
            user_id=user.user_id, door_id=door.door_id)), metadata=(("traceparent", grant_parent),), timeout=10)

    async with channel(traced_system["access"], pki.issue("door", door.door_id)) as ach:
        doors = access_pb2_grpc.AccessServiceStub(ach)
        # The door asks, in a trace of its own, until its answer reflects the grant: the first
        # Unlock that sees it (earlier ones, if any, were answered from an older view).
        unlock_traces: list[str] = []

        async def sees_the_grant() -> bool:
            parent, trace_id = traceparent()
            unlock_traces.append(trace_id)
            answer = await doors.Unlock(access_pb2.UnlockRequest(
                door_id=door.door_id, user_id=user.user_id, request_id=uuid.uuid4().hex,
                min_revision=granted.revision), metadata=(("traceparent", parent),), timeout=5)
            return answer.decision == ev.DECISION_GRANTED

        await until(sees_the_grant, "an Unlock granted from the new grant")
    unlock_trace = unlock_traces[-1]

    # The grant's trace: the permissions call, the relay's publish, the access side's consumer
    # span(s), and the first Unlock that saw it, which links to the Unlock's own trace.
    # Each process exports on its own schedule: wait for every part of the trace to arrive.
    def whole_grant_trace(all_spans) -> bool:
        grant = [s for s in all_spans if in_trace(s, grant_trace)]
        return (any(s.name == "access.first_unlock" for s in grant)
                and any(s.kind == "SERVER" and s.name.endswith("/GrantAccess")
                        and s.service == "latchkey-permissions" for s in grant)
                and any(s.kind == "PRODUCER" and s.service == "latchkey-permissions" for s in grant)
                and any(s.kind == "CONSUMER" and s.service == "latchkey-access" for s in grant))

    spans = await collector.wait_for(whole_grant_trace, "the grant's trace, up to the first Unlock that saw it")
    grant = [s for s in spans if in_trace(s, grant_trace)]
    (first,) = [s for s in grant if s.name == "access.first_unlock"]
    unlock_span = next(s for s in spans if s.trace_id == unlock_trace and s.kind == "SERVER")
    assert (unlock_span.trace_id, unlock_span.span_id) in first.links

    # The Unlock's trace goes on through its decision event (a publish in that trace, or linked to
    # it when several decisions share one message) to the audit ingest of that message.
    def ingested(all_spans) -> bool:
        publishes = {(p.trace_id, p.span_id) for p in all_spans
                     if p.kind == "PRODUCER" and p.service == "latchkey-access" and in_trace(p, unlock_trace)}
        return any(a.service == "latchkey-audit" and a.name.startswith("audit.ingest")
                   and any((a.trace_id, a.parent_span_id) == p or p in a.links for p in publishes)
                   for a in all_spans)

    await collector.wait_for(ingested, "the audit ingest of the Unlock's decision event")
