"""Permissions writes at a steady rate: GrantAccess/RevokeAccess latency and commit-to-JetStream lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import nats
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc
from nats.js.api import DeliverPolicy

from bench.harness import aio_channel, percentile, start_services, tls
from latchkit.bus import PERMISSIONS_STREAM, BusSettings, ensure_streams

RATE = 200  # writes per second
SECONDS = 10


async def run(stack_urls, pki_dir: Path, state_dir: Path) -> dict:
    services = start_services(stack_urls, pki_dir, state_dir, names=("permissions",))
    lags: list[float] = []
    nc = await nats.connect(stack_urls.nats_url)
    try:
        async def on_event(msg) -> None:
            env = ev.Envelope.FromString(msg.data)
            lags.append(time.time() - env.occurred_at.ToNanoseconds() / 1e9)

        js = nc.jetstream()
        # The relay creates the stream when it first connects, maybe after this point.
        await ensure_streams(js, BusSettings(url=stack_urls.nats_url, duplicate_window_s=600.0))
        await js.subscribe("latchkey.permissions.grant_changed", stream=PERMISSIONS_STREAM, cb=on_event,
                           ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        async with aio_channel(services.targets["permissions"], tls(pki_dir, "admin")) as ch:
            admin = permissions_pb2_grpc.PermissionsServiceStub(ch)
            users = [(await admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="b")))).user.user_id
                     for _ in range(50)]
            doors = [(await admin.CreateDoor(pm.CreateDoorRequest(door=pm.Door(name="d", time_zone="UTC")))).door
                     .door_id for _ in range(10)]
            # Unloaded latency first: one writer, back to back.
            seq_grant, seq_revoke = [], []
            for i in range(200):
                t0 = time.perf_counter()
                g = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(
                    user_id=users[i % len(users)], door_id=doors[i % len(doors)])), timeout=10)
                t1 = time.perf_counter()
                await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id), timeout=10)
                seq_grant.append((t1 - t0) * 1e3)
                seq_revoke.append((time.perf_counter() - t1) * 1e3)
            lags.clear()
            grant_ms, revoke_ms = [], []
            live: list[str] = []
            failures: dict[str, int] = {}

            async def write(i: int) -> None:
                try:
                    await write_once(i)
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] = failures.get(exc.code().name, 0) + 1

            async def write_once(i: int) -> None:
                t0 = time.perf_counter()
                if i % 2 == 0 or not live:
                    reply = await admin.GrantAccess(pm.GrantAccessRequest(grant=pm.Grant(
                        user_id=users[i % len(users)], door_id=doors[i % len(doors)])), timeout=10)
                    live.append(reply.grant.grant_id)
                    grant_ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    await admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=live.pop(0)), timeout=10)
                    revoke_ms.append((time.perf_counter() - t0) * 1e3)

            # Open loop: a write starts every 1/RATE s whatever the previous ones are doing.
            tasks = []
            start = time.perf_counter()
            for i in range(RATE * SECONDS):
                delay = start + i / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(write(i)))
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
            expected = len(grant_ms)
            deadline = time.monotonic() + 30
            while len(lags) < expected and time.monotonic() < deadline:  # noqa: ASYNC110 - bench drain, bounded
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
        services.stop()
    return {
        "grant_access_one_writer": {"p50_ms": percentile(seq_grant, 0.5), "p99_ms": percentile(seq_grant, 0.99),
                                    "calls": len(seq_grant)},
        "revoke_access_one_writer": {"p50_ms": percentile(seq_revoke, 0.5), "p99_ms": percentile(seq_revoke, 0.99),
                                     "calls": len(seq_revoke)},
        f"grant_access_at_{RATE}_per_s": {"p50_ms": percentile(grant_ms, 0.5), "p99_ms": percentile(grant_ms, 0.99),
                         "calls": len(grant_ms)},
        f"revoke_access_at_{RATE}_per_s": {"p50_ms": percentile(revoke_ms, 0.5), "p99_ms": percentile(revoke_ms, 0.99),
                          "calls": len(revoke_ms)},
        f"commit_to_jetstream_lag_at_{RATE}_per_s": {"p50_ms": percentile(lags, 0.5) * 1e3, "p99_ms": percentile(lags, 0.99) * 1e3,
                                    "calls": len(lags)},
        "achieved_writes_per_s": {"rps": (len(grant_ms) + len(revoke_ms)) / elapsed,
                                  "calls": RATE * SECONDS, **{f"failed_{k}": v for k, v in failures.items()}},
    }
