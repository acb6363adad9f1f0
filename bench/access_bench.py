"""Unlock against its floor: a bare echo RPC on the same runner and TLS, in the same run.

Services run as subprocesses (one access worker, like the one-process echo
floor; audit is not started: this measures the access service); the load
generator is this process (grpc.aio, one channel per door). The hot path is
the per-process cache (`unlock_memory_hit`); a second access process with that
cache off measures the Redis hit and the view hit after a Redis flush.
Two lower bounds (`bench/bound_server.py`) run beside the floor: an answer
that decides nothing, and the same answer with Unlock's decision event.
`--tracing` adds the Unlock rows with tracing off and on side by side
(`bench/access_tracing.py`).
The floor and the cases it is compared with run in rotation, three turns of
one second each (`harness.interleaved`), so a slow spell of the machine does
not land on one of them only.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import redis.asyncio as aioredis
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.bound_server import ANSWER, ANSWER_AND_RECORD
from bench.harness import (
    aio_channel,
    closed_loop,
    interleaved,
    percentile,
    start_module,
    start_services,
    summary_ms,
    tls,
    wait_healthy,
)
from devstack import certs
from devstack.stack import Stack, free_port
from latchkit import envelope
from latchkit.bus import DECISIONS_STREAM
from latchkit.settings import REPO_ROOT, TlsSettings

IN_FLIGHT = (1, 8, 32)
SECONDS = 3.0
VIEW_KEYS = 600
_REQUEST_IDS = itertools.count()


def fresh(prototype: access_pb2.UnlockRequest) -> access_pb2.UnlockRequest:
    """`prototype` with a request_id of its own (a counter: cheap). Unlock requires one, and a
    reused one is a replay (the first answer again), which would measure the replay path."""
    request = access_pb2.UnlockRequest()
    request.CopyFrom(prototype)
    request.request_id = f"bench-{next(_REQUEST_IDS)}"
    return request


def door_tls(pki_dir: Path, door_id: str) -> TlsSettings:
    issued = certs.issue(pki_dir, pki_dir, "door", door_id)
    return TlsSettings(pki_dir / "ca.pem", issued.cert_file, issued.key_file)


async def seed(admin, door_name: str, users: int):
    door = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name=door_name, time_zone="UTC")))).door
    cards, revision = [], 0
    for _ in range(users):
        u = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="bench")))).user
        secret = uuid.uuid4().hex[:16]
        await admin.IssueCredential(pm.IssueCredentialRequest(user_id=u.user_id, kind=1, secret=secret))
        revision = (await admin.GrantAccess(pm.GrantAccessRequest(
            grant=pm.Grant(user_id=u.user_id, door_id=door.door_id)))).revision
        cards.append(access_pb2.PresentedCredential(kind=1, secret=secret))
    return door, cards, revision


async def run(stack_urls, pki_dir: Path, state_dir: Path, stack: Stack | None = None,
              tracing: bool = False) -> dict:
    services = start_services(stack_urls, pki_dir, state_dir, names=("permissions", "access"), extra_env={
        "LATCHKEY_ACCESS_WORKERS": "1", "LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS": "1000000000",
        "LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS": "1000000000"})
    echo_port, pg_port, bound_port = free_port(), free_port(), free_port()
    echo = start_module("bench.echo_server", services.env, echo_port)
    pg = start_module("bench.pg_unlock_server", services.env, pg_port)
    bound = start_module("bench.bound_server", services.env, bound_port)
    redis_only = None
    rows: dict = {}
    try:
        async with aio_channel(services.targets["permissions"], tls(pki_dir, "admin")) as pch:
            admin = permissions_pb2_grpc.PermissionsServiceStub(pch)
            hot_door, hot_cards, _ = await seed(admin, "hot", 1)
            view_door, view_cards, revision = await seed(admin, "view", VIEW_KEYS)
            servers = {"echo_floor": echo.pid, "bound_answer_only": bound.pid,
                       "bound_answer_and_event": bound.pid, "unlock_memory_hit": services.procs["access"].pid,
                       "unlock_deny_unknown_credential": services.procs["access"].pid,
                       "pg_direct_in_handler": pg.pid}
            # The broker stores every decision event: its CPU per call is part of what Unlock costs.
            shared = {"nats": stack.pid("nats")} if stack is not None else {}
            rows.update(await measure(services.targets["access"], pki_dir, echo_port, pg_port, bound_port,
                                      hot_door, hot_cards[0], revision, servers, shared))
            rows["server_decision_time_memory_hit"] = await decision_times(stack_urls.nats_url, hot_door.door_id)
            if tracing:  # `--tracing`: the Unlock rows again beside a traced access process
                from bench.access_tracing import measure_traced

                rows.update(await measure_traced(
                    (services.procs["access"].pid, services.targets["access"]), start_access, services.env,
                    state_dir, pki_dir, hot_door, hot_cards[0], revision, echo_port, shared))
            # The same service with its per-process cache off: what Redis and the view cost.
            redis_only, target = start_access(services.env, state_dir / "redis-only",
                                              {"LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES": "0"})
            rows.update(await measure_redis_and_view(target, pki_dir, stack_urls, hot_door, hot_cards[0],
                                                     view_door, view_cards, revision))
            rows["revocation_visible"] = await revocation(admin, services, pki_dir)
    finally:
        for proc in (echo, pg, bound):
            proc.terminate()
        for proc in (echo, pg, bound):
            proc.wait(timeout=15)  # the bound server sends its last events before it exits
        if redis_only is not None:
            redis_only.terminate()
            redis_only.wait(timeout=15)
        services.stop()
    floor = rows.get("echo_floor@1", {}).get("p50_ms")
    for name, row in rows.items():
        if "@" in name and floor:
            n = name.split("@")[1]
            base = rows[f"echo_floor@{n}"]
            row["p50_x_floor"] = row["p50_ms"] / base["p50_ms"]
            row["rps_x_floor"] = row["rps"] / base["rps"]
            if "server_cpu_us" in row and base.get("server_cpu_us"):
                row["cpu_x_floor"] = row["server_cpu_us"] / base["server_cpu_us"]
    return rows


def start_access(env: dict, state: Path, extra: dict) -> tuple[subprocess.Popen, str]:
    """One more access process on its own port, view and projector consumer."""
    port = free_port()
    shared_key = Path(env["LATCHKEY_STATE_DIR"]) / "secrets" / "hmac.key"  # credentials hash the same
    env = {"LATCHKEY_CREDENTIAL_HMAC_KEY_FILE": str(shared_key), **env, "LATCHKEY_ACCESS_PORT": str(port),
           "LATCHKEY_STATE_DIR": str(state), "LATCHKEY_ACCESS_INSTANCE": state.name, **extra}
    proc = subprocess.Popen([sys.executable, "-m", "services.access"], env=env, cwd=REPO_ROOT)
    target = f"localhost:{port}"
    wait_healthy({"access": target}, {"access": proc}, env)
    return proc, target


async def measure(target, pki_dir, echo_port, pg_port, bound_port, hot_door, hot_card, revision, servers,
                  shared) -> dict:
    rows = {}
    hot_tls = door_tls(pki_dir, hot_door.door_id)
    unknown = access_pb2.PresentedCredential(kind=1, secret="not-a-known-card")
    async with aio_channel(target, hot_tls) as ch, \
            aio_channel(f"localhost:{echo_port}", hot_tls) as ech, \
            aio_channel(f"localhost:{pg_port}", hot_tls) as pch, \
            aio_channel(f"localhost:{bound_port}", hot_tls) as bch:
        stub, pstub = access_pb2_grpc.AccessServiceStub(ch), access_pb2_grpc.AccessServiceStub(pch)
        echo = ech.unary_unary("/latchkey.bench.Echo/Echo")
        answer = bch.unary_unary(ANSWER, access_pb2.UnlockRequest.SerializeToString,
                                 access_pb2.UnlockResponse.FromString)
        answer_and_record = bch.unary_unary(ANSWER_AND_RECORD, access_pb2.UnlockRequest.SerializeToString,
                                            access_pb2.UnlockResponse.FromString)
        hit = access_pb2.UnlockRequest(door_id=hot_door.door_id, credential=hot_card, min_revision=revision)
        first = await stub.Unlock(fresh(hit), timeout=5)
        assert first.decision == ev.DECISION_GRANTED, first
        hit.ClearField("min_revision")
        payload = fresh(hit).SerializeToString()  # as long as the requests the other cases send
        deny = access_pb2.UnlockRequest(door_id=hot_door.door_id, credential=unknown)

        async def call_echo(i):
            await echo(payload, timeout=5)

        async def call_answer(i):
            await answer(fresh(hit), timeout=5)

        async def call_answer_and_event(i):
            await answer_and_record(fresh(hit), timeout=5)

        async def call_hit(i):
            await stub.Unlock(fresh(hit), timeout=5)

        async def call_deny(i):
            await stub.Unlock(fresh(deny), timeout=5)

        async def call_pg(i):
            await pstub.Unlock(fresh(hit), timeout=5)

        for n in IN_FLIGHT:
            measured = await interleaved({"echo_floor": call_echo, "bound_answer_only": call_answer,
                                          "bound_answer_and_event": call_answer_and_event,
                                          "unlock_memory_hit": call_hit,
                                          "unlock_deny_unknown_credential": call_deny,
                                          "pg_direct_in_handler": call_pg}, n, SECONDS, servers=servers,
                                         shared=shared)
            rows.update({f"{name}@{n}": row for name, row in measured.items()})
    return rows


async def measure_redis_and_view(target, pki_dir, stack_urls, hot_door, hot_card, view_door, view_cards,
                                 revision) -> dict:
    rows = {}
    async with aio_channel(target, door_tls(pki_dir, hot_door.door_id)) as ch, \
            aio_channel(target, door_tls(pki_dir, view_door.door_id)) as vch:
        stub, vstub = access_pb2_grpc.AccessServiceStub(ch), access_pb2_grpc.AccessServiceStub(vch)
        hit = access_pb2.UnlockRequest(door_id=hot_door.door_id, credential=hot_card, min_revision=revision)
        first = await stub.Unlock(fresh(hit), timeout=5)
        assert first.decision == ev.DECISION_GRANTED, first
        hit.ClearField("min_revision")

        async def call_hit(i):
            await stub.Unlock(fresh(hit), timeout=5)

        r = aioredis.Redis.from_url(stack_urls.redis_url)
        # Workers trust Redis only under their projector's lease: without it this row would
        # measure the view, not Redis.
        deadline = time.monotonic() + 10
        while not await r.exists("lk:live:redis-only"):
            assert time.monotonic() < deadline, "the redis-only access process never took its Redis lease"
            await asyncio.sleep(0.05)
        for n in IN_FLIGHT:
            rows[f"unlock_redis_hit@{n}"] = await closed_loop(call_hit, n, SECONDS)
        # View hits: each card once, right after Redis lost everything.
        for n in IN_FLIGHT:
            await r.flushall()
            latencies: list[float] = []
            queue = list(view_cards)

            async def worker(queue=queue, latencies=latencies):
                while queue:
                    card = queue.pop()
                    t0 = time.perf_counter()
                    answer = await vstub.Unlock(fresh(access_pb2.UnlockRequest(door_id=view_door.door_id,
                                                                               credential=card)), timeout=5)
                    latencies.append(time.perf_counter() - t0)
                    assert answer.decision == ev.DECISION_GRANTED

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(n)))
            rows[f"unlock_view_hit_after_flush@{n}"] = summary_ms(latencies, time.perf_counter() - t0)
        await r.aclose()
    return rows


async def revocation(admin, services, pki_dir, trials: int = 60) -> dict:
    door = (await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="rev", time_zone="UTC")))).door
    user = (await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="rev")))).user
    delays = []
    async with aio_channel(services.targets["access"], door_tls(pki_dir, door.door_id)) as ch:
        stub = access_pb2_grpc.AccessServiceStub(ch)
        request = access_pb2.UnlockRequest(door_id=door.door_id, user_id=user.user_id)
        for _ in range(trials):
            g = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(user_id=user.user_id,
                                                                             door_id=door.door_id)))
            request.min_revision = g.revision
            assert (await stub.Unlock(fresh(request), timeout=5)).decision == ev.DECISION_GRANTED
            request.min_revision = 0
            await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id))
            t0 = time.perf_counter()
            while (await stub.Unlock(fresh(request), timeout=5)).decision == ev.DECISION_GRANTED:
                pass
            delays.append(time.perf_counter() - t0)
    return {"p50_ms": percentile(delays, 0.5) * 1e3, "p99_ms": percentile(delays, 0.99) * 1e3,
            "max_ms": max(delays) * 1e3, "calls": trials}


async def decision_times(nats_url: str, door_id: str) -> dict:
    """decision_latency from the UnlockDecided events of the hot door (the server's own clock)."""
    nc = await nats.connect(nats_url)
    values = []
    try:
        sub = await nc.jetstream().pull_subscribe(
            "latchkey.decisions.>", stream=DECISIONS_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except TimeoutError:
                break
            for msg in msgs:
                envs = [ev.Envelope.FromString(raw) for raw in envelope.unpack(msg.subject, msg.data)]
                for env in envs:
                    if env.WhichOneof("payload") != "unlock_decided" or env.unlock_decided.door_id != door_id:
                        continue
                    if env.unlock_decided.reason != 1:
                        continue
                    d = env.unlock_decided.decision_latency
                    values.append(d.seconds + d.nanos / 1e9)
                await msg.ack()
    finally:
        await nc.close()
    return {"p50_ms": percentile(values, 0.5) * 1e3, "p99_ms": percentile(values, 0.99) * 1e3, "calls": len(values)}
