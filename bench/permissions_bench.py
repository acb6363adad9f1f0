"""Permissions writes at scale, each figure against the write floor measured in the same run.

Sections (the README, "Tests and benchmarks", says the same for readers of the table):
- floor_and_one_writer: `write_floor_psycopg` is one GrantAccess's transaction
  sent by a bare psycopg client (bench/write_floor.py); `grpc_echo` a bare RPC of
  a GrantAccess request's size on the same runner and TLS (bench/echo_server.py);
  `write_bound_grpc` the floor's transaction behind a bare gRPC method on the same
  runner, TLS and interceptor (bench/write_bound_server.py): the least any gRPC
  service in this runtime takes for that write; `grant_access_one_writer` is
  GrantAccess by one gRPC client; the four in rotation. Target: GrantAccess's p50
  at most 1.5x the floor's. Its `p50_x_bound` is what the permissions service's
  own work costs on top of the bound.
- closed_loop: 1, 8, 32 and 128 writers, each issuing GrantAccess back to back;
  `rate_x_one_writer` is rate(N)/rate(1), target at least 10 at 32. During the
  32-writer run one writer in 4 revokes each grant it made, and two more rows come
  from that run: commit-to-JetStream lag (the envelope's occurred_at to this
  process's subscriber) and revocation-visible (RevokeAccess's answer, revision R,
  to the access service's WaitForRevision(R) returning: from then on Unlock sees it).
  `cpu_per_write@32` is the CPU time each process spent per accepted write in that run
  (user + system, each with its children, the relay being the permissions service's
  child; over the whole run, warm-up writes counted too):
  on a machine whose cores all of them share, `cores / total` is the most writes per
  second it can take, whatever the service does with its waits.
- open_loop_ramp: a write starts every 1/rate s whatever the others are doing,
  at each offered rate; refusals (RESOURCE_EXHAUSTED) must come fast
  (p99 under 50 ms) and no write may time out, be UNAVAILABLE or fail otherwise.
- bulk: BatchGrantAccess with 100 and 1,000 grants per call, and
  `latchkey permissions import` of a CSV of 50,000 users with one grant each;
  "n/a" when the measured tree lacks the RPC or the command.
Every (user, door) pair is fresh (or seen once before) when written: a pair's
grants are all read again by each write to it, so reusing a few pairs would
measure a growing read.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import nats
from google.protobuf.duration_pb2 import Duration
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc
from nats.js.api import DeliverPolicy

from bench.echo_server import ECHO
from bench.harness import (
    aio_channel,
    cpu_by_role,
    interleaved,
    percentile,
    start_module,
    start_services,
    tls,
)
from bench.write_bound_server import GRANT
from bench.write_floor import WriteFloor
from bench.write_load import MAX_RETRY_WAIT_S, Outcomes, closed_loop, open_loop, retry_delay
from devstack.stack import free_port
from latchkit.bus import PERMISSIONS_STREAM, BusSettings, ensure_streams
from latchkit.settings import REPO_ROOT

USERS, DOORS = 600, 50  # 30,000 pairs: about one write each in a run
FLOOR_SECONDS = 8.0  # each case of the floor section, in 4 turns
WRITERS = (1, 8, 32, 128)
LOOP_SECONDS = 3.0
REVOKING_AT, REVOKER_EVERY = 32, 4
RAMP = (100, 200, 500, 1000, 2000)
RAMP_SECONDS = 4.0
DEADLINE_S = 10.0
BATCHES = ((100, 5), (1000, 3))  # (grants per call, calls)
LAG_DRAIN_S = SETTLE_S = 30.0
IMPORT_USERS = 50_000
IMPORT_TIMEOUT_S = 150.0
COLUMNS = ("offered_per_s", "rate_per_s", "rate_x_floor", "rate_x_one_writer", "p50_ms", "p99_ms", "p50_x_floor",
           "p50_x_bound", "cpu_ms_per_write", "calls", "wall_s", "refused", "refused_p99_ms", "timeouts_unavailable",
           "other_errors", "target", "note")
CLI = (sys.executable, "-c", "from ops.cli import main; main()")
CPU_AT = 32


async def run(stack_urls, pki_dir: Path, state_dir: Path, stack=None) -> dict:
    services = start_services(stack_urls, pki_dir, state_dir, names=("permissions", "access"),
                              extra_env={"LATCHKEY_ACCESS_WORKERS": "1"})  # two cores: leave them to writes
    nc = await nats.connect(stack_urls.nats_url)
    lag = JetStreamLag()
    echo_port = free_port()
    echo = start_module("bench.echo_server", services.env, echo_port)
    bound_port = free_port()
    bound = start_module("bench.write_bound_server", services.env, bound_port)
    floor = await WriteFloor.connect(stack_urls.postgres_dsn)
    try:
        js = nc.jetstream()
        # The relay creates the stream when it first connects, maybe after this point.
        await ensure_streams(js, BusSettings(url=stack_urls.nats_url, duplicate_window_s=600.0))
        await js.subscribe("latchkey.permissions.grant_changed", stream=PERMISSIONS_STREAM, cb=lag.on_event,
                           ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        async with aio_channel(services.targets["permissions"], tls(pki_dir, "admin")) as pch, \
                aio_channel(services.targets["access"], tls(pki_dir, "admin")) as ach, \
                aio_channel(f"localhost:{echo_port}", tls(pki_dir, "admin")) as ech, \
                aio_channel(f"localhost:{bound_port}", tls(pki_dir, "admin")) as bch:
            bench = WriteBench(permissions_pb2_grpc.PermissionsServiceStub(pch),
                               access_pb2_grpc.AccessServiceStub(ach), lag, roles(services, stack))
            await bench.seed()
            sections = {"floor_and_one_writer": await bench.against_floor(
                            floor, ech.unary_unary(ECHO), bch.unary_unary(GRANT)),
                        "closed_loop": await bench.closed_loops(),
                        "bulk": {**await bench.batches(),
                                 f"import_{IMPORT_USERS}_users": await bench.import_users(services.env, state_dir)},
                        # Last: past its capacity a tree without overload refusal keeps working off
                        # abandoned writes for a while after their callers gave up.
                        "open_loop_ramp": await bench.ramp()}
    finally:
        for module in (echo, bound):
            module.terminate()
            module.wait(timeout=15)
        await floor.close()
        await nc.close()
        services.stop()
    return with_ratios(sections)


class JetStreamLag:
    """Commit-to-JetStream lag of each GrantChanged while collecting; the highest revision seen."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.collecting = False
        self.revision = 0
        self._awaited = (0, asyncio.Event())

    async def on_event(self, msg) -> None:
        env = ev.Envelope.FromString(msg.data)
        if self.collecting:
            self.lags.append(time.time() - env.occurred_at.ToNanoseconds() / 1e9)
        self.revision = max(self.revision, env.revision)
        if self.revision >= self._awaited[0]:
            self._awaited[1].set()

    async def until(self, revision: int) -> None:
        """Until the event of `revision` arrived (the relay publishes in commit order), LAG_DRAIN_S at most."""
        self._awaited = (revision, asyncio.Event())
        if self.revision < revision:
            try:
                await asyncio.wait_for(self._awaited[1].wait(), LAG_DRAIN_S)
            except TimeoutError:
                pass  # the row then counts fewer events than writes: visible in `calls`


def roles(services, stack) -> dict[str, tuple[int, bool]]:
    """The processes a write runs through, for `cpu_by_role`: name -> (pid, with descendants?)."""
    found = {"permissions": (services.procs["permissions"].pid, False),
             "permissions_and_relay": (services.procs["permissions"].pid, True),
             "access": (services.procs["access"].pid, True), "bench_client": (os.getpid(), False)}
    if stack is not None:  # run from `python -m bench`: the stack's own servers too
        found["postgres"] = (stack.status()["postgres"]["pid"], True)
        found["nats"] = (stack.pid("nats"), True)
    return found


class WriteBench:
    def __init__(self, admin, access, lag: JetStreamLag, cpu_roles: dict[str, tuple[int, bool]]) -> None:
        self.admin, self.access, self.lag = admin, access, lag
        self.cpu_roles = cpu_roles
        self.pairs: itertools.cycle = itertools.cycle(())

    async def seed(self) -> None:
        """Users and doors made through the service; every (user, door) pair in turn."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        users: list[str] = []
        doors: list[str] = []
        for i in range(USERS + DOORS):
            queue.put_nowait(i)

        async def maker() -> None:
            while not queue.empty():
                if queue.get_nowait() < DOORS:
                    doors.append((await self.admin.CreateDoor(pm.CreateDoorRequest(
                        door=pm.Door(name="bench", time_zone="UTC")), timeout=DEADLINE_S)).door.door_id)
                else:
                    users.append((await self.admin.CreateUser(pm.CreateUserRequest(
                        user=pm.User(display_name="bench")), timeout=DEADLINE_S)).user.user_id)

        await asyncio.gather(*(maker() for _ in range(8)))
        self.doors = doors
        self.pairs = itertools.cycle([(users[i % USERS], doors[i // USERS]) for i in range(USERS * DOORS)])

    def grant_request(self) -> pm.GrantAccessRequest:
        user_id, door_id = next(self.pairs)
        return pm.GrantAccessRequest(grant=pm.Grant(user_id=user_id, door_id=door_id))

    async def grant(self) -> pm.GrantAccessResponse:
        return await self.admin.GrantAccess(self.grant_request(), timeout=DEADLINE_S)

    async def against_floor(self, floor: WriteFloor, echo, bound) -> dict:
        payload = self.grant_request().SerializeToString()  # the size of a GrantAccess request

        async def bare(_: int) -> None:
            await floor.grant(*next(self.pairs))

        async def grpc_echo(_: int) -> None:
            await echo(payload, timeout=DEADLINE_S)

        async def write_bound(_: int) -> None:
            await bound(self.grant_request().SerializeToString(), timeout=DEADLINE_S)

        async def one_writer(_: int) -> None:
            await self.grant()

        measured = await interleaved({"write_floor_psycopg": bare, "grpc_echo": grpc_echo,
                                      "write_bound_grpc": write_bound, "grant_access_one_writer": one_writer},
                                     1, FLOOR_SECONDS, rounds=4)
        rows = {name: {"rate_per_s": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "calls": r["calls"]}
                for name, r in measured.items()}
        rows["grant_access_one_writer"]["target"] = "p50 <= 1.5x floor"
        return rows

    async def closed_loops(self) -> dict:
        rows = {}
        for writers in WRITERS:
            rows.update(await self.closed(writers, revoking=writers == REVOKING_AT))
        rows[f"grant_access@{REVOKING_AT}"]["target"] = ">= 10x one writer"
        return rows

    async def closed(self, writers: int, revoking: bool) -> dict:
        visible: list[float] = []
        not_reached = 0
        waits: list[asyncio.Task] = []
        last_revision = 0

        async def watch(revision: int, since: float) -> None:
            nonlocal not_reached
            try:
                answer = await self.access.WaitForRevision(access_pb2.WaitForRevisionRequest(
                    revision=revision, timeout=Duration(seconds=10)), timeout=DEADLINE_S + 1)
            except grpc.aio.AioRpcError:
                answer = None
            if answer is not None and answer.reached:
                visible.append(time.perf_counter() - since)
            else:
                not_reached += 1

        async def writer(w: int, outcomes: Outcomes, record: bool) -> None:
            nonlocal last_revision
            granted = await outcomes.attempt(self.grant, record)
            if granted is None:
                return
            last_revision = max(last_revision, granted.revision)
            if revoking and w % REVOKER_EVERY == 0:
                revoked = await outcomes.attempt(lambda: self.admin.RevokeAccess(pm.RevokeAccessRequest(
                    grant_id=granted.grant.grant_id), timeout=DEADLINE_S), record)
                if revoked is not None:
                    last_revision = max(last_revision, revoked.revision)
                    if record:  # measured apart, while this writer goes on writing
                        waits.append(asyncio.create_task(watch(revoked.revision, time.perf_counter())))

        self.lag.lags.clear()
        self.lag.collecting = revoking
        cpu_before = cpu_by_role(self.cpu_roles) if writers == CPU_AT else {}
        outcomes = await closed_loop(writer, writers, LOOP_SECONDS)
        cpu_used = {name: cpu_by_role(self.cpu_roles)[name] - was for name, was in cpu_before.items()}
        await asyncio.gather(*waits)
        await self.lag.until(last_revision)
        self.lag.collecting = False
        rows = {f"grant_access@{writers}": outcomes.row(LOOP_SECONDS)}
        if cpu_used:
            rows[f"cpu_per_write@{writers}"] = cpu_row(cpu_used, outcomes.succeeded)
        if revoking:
            lags = self.lag.lags
            rows[f"commit_to_jetstream_lag@{writers}"] = {
                "p50_ms": percentile(lags, 0.5) * 1e3, "p99_ms": percentile(lags, 0.99) * 1e3, "calls": len(lags)}
            rows[f"revocation_visible@{writers}"] = {
                "p50_ms": percentile(visible, 0.5) * 1e3, "p99_ms": percentile(visible, 0.99) * 1e3,
                "calls": len(visible), "other_errors": f"not_reached={not_reached}" if not_reached else "",
                "target": "p99 < 1000 ms (the promise)"}
        return rows

    async def ramp(self) -> dict:
        rows = {}
        for rate in RAMP:
            await self.settle()
            outcomes, wall = await open_loop(self.grant, rate, RAMP_SECONDS)
            rows[f"offered_{rate}_per_s"] = {"offered_per_s": rate, **outcomes.row(wall),
                                             "target": "refused p99<50ms, 0 lost"}
        return rows

    async def settle(self) -> None:
        """Until a write goes through again (the previous step's backlog worked off), SETTLE_S at most."""
        give_up = time.monotonic() + SETTLE_S
        while time.monotonic() < give_up:
            try:
                await self.grant()
                return
            except grpc.aio.AioRpcError as exc:  # refused: as told; else (unavailable) a short pause
                await asyncio.sleep(min(retry_delay(exc), MAX_RETRY_WAIT_S) or 0.1)

    async def batches(self) -> dict:
        rows = {}
        for size, calls in BATCHES:
            outcomes = Outcomes()
            for _ in range(calls):
                await outcomes.attempt(functools.partial(self.admin.BatchGrantAccess, pm.BatchGrantAccessRequest(
                    requests=[self.grant_request() for _ in range(size)]), timeout=30))
            name = f"batch_grant_access@{size}"
            failed = " ".join(f"{k}={v}" for k, v in sorted(outcomes.errors.items()))
            if outcomes.errors["UNIMPLEMENTED"]:
                rows[name] = not_measured("BatchGrantAccess is UNIMPLEMENTED in the measured tree")
            elif not outcomes.accepted:
                code = next(iter(outcomes.first_detail))
                rows[name] = not_measured(f"every call failed: {failed} ({outcomes.first_detail[code][:100]})")
            else:
                wall = sum(outcomes.accepted)  # calls one after another: their time is the wall time
                row = outcomes.row(wall)
                rows[name] = {"rate_per_s": row["rate_per_s"] * size, "p50_ms": row["p50_ms"],
                              "p99_ms": row["p99_ms"], "calls": row["calls"], "wall_s": wall,
                              "note": f"grants/s; latency per call of {size}" + (f"; failed: {failed}" if failed else "")}
        return rows

    async def import_users(self, env: dict, state_dir: Path) -> dict:
        probe = await asyncio.create_subprocess_exec(*CLI, "permissions", "import", "--help", env=env, cwd=REPO_ROOT,
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if await probe.wait() != 0:
            return not_measured("`latchkey permissions import` does not exist in the measured tree")
        path = state_dir / "import-users.csv"
        with path.open("w") as csv_file:
            csv_file.write("external_id,display_name,email,door_ids\n")
            tag = time.strftime("%H%M%S")
            for i in range(IMPORT_USERS):
                csv_file.write(f"bench-{tag}-{i},Bench User {i},user{i}.{tag}@bench.example,{self.doors[i % DOORS]}\n")
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*CLI, "permissions", "import", str(path), "--output", "json",
                                                    env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), IMPORT_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return not_measured(f"timed out after {IMPORT_TIMEOUT_S:.0f} s (killed)")
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            text = err.decode(errors="replace")
            if "UNIMPLEMENTED" in text:
                return not_measured("the batch RPCs the import calls are UNIMPLEMENTED in the measured tree")
            last = (text.strip().splitlines() or [""])[-1][-160:]
            return not_measured(f"failed (exit {proc.returncode}): {last}")
        created = json.loads(out.decode().strip().splitlines()[-1]).get("users_created")
        if created != IMPORT_USERS:  # a figure for users that were not made would be a fake one
            return not_measured(f"the import reported {created} users created, not {IMPORT_USERS}")
        return {"rate_per_s": IMPORT_USERS / wall, "p50_ms": "", "p99_ms": "", "calls": IMPORT_USERS, "wall_s": wall,
                "note": "users/s; the CLI's start-up included"}


def cpu_row(used: dict[str, float], writes: int) -> dict:
    """CPU ms per accepted write, by process and in all; what the machine's cores allow at that."""
    used = dict(used)
    used["relay"] = used.pop("permissions_and_relay") - used["permissions"]
    per_write = {name: seconds * 1e3 / writes for name, seconds in used.items()} if writes else {}
    total = sum(per_write.values())
    cores = os.cpu_count() or 1
    return {"cpu_ms_per_write": total, "calls": writes,
            "note": " ".join(f"{name}={ms:.2f}" for name, ms in sorted(per_write.items(), key=lambda x: -x[1]))
            + (f"; {cores} cores / {total:.2f} ms = at most {cores / total * 1e3:.0f} writes/s" if total else "")}


def not_measured(why: str) -> dict:
    """A bulk row the measured tree cannot give: the same keys, each "n/a", and why."""
    return {**dict.fromkeys(("rate_per_s", "rate_x_floor", "p50_ms", "p99_ms", "p50_x_floor", "calls", "wall_s"),
                            "n/a"), "note": f"n/a: {why}"}


def with_ratios(sections: dict) -> dict:
    """Each rate and p50 as a multiple of the floor's; closed-loop rates also of one writer's."""
    floor = sections["floor_and_one_writer"]["write_floor_psycopg"]
    bound = sections["floor_and_one_writer"].get("write_bound_grpc", {}).get("p50_ms")
    one = sections["closed_loop"].get("grant_access@1", {}).get("rate_per_s")
    for section in sections.values():
        for name, row in section.items():
            ratios = {}
            if isinstance(row.get("rate_per_s"), float) and floor["rate_per_s"]:
                ratios["rate_x_floor"] = row["rate_per_s"] / floor["rate_per_s"]
            if name.startswith("grant_access@") and one:
                ratios["rate_x_one_writer"] = row["rate_per_s"] / one
            if isinstance(row.get("p50_ms"), float) and floor["p50_ms"]:
                ratios["p50_x_floor"] = row["p50_ms"] / floor["p50_ms"]
            if name == "grant_access_one_writer" and bound:
                ratios["p50_x_bound"] = row["p50_ms"] / bound
            row.update(ratios)
            if "target" in row:
                row["target"] = f"{row['target']}: {'met' if met(name, row) else 'NOT met'}"
            section[name] = {key: row[key] for key in COLUMNS if key in row}
    return sections


def met(name: str, row: dict) -> bool:
    if name == "grant_access_one_writer":
        return row.get("p50_x_floor", float("inf")) <= 1.5
    if name.startswith("grant_access@"):
        return row.get("rate_x_one_writer", 0.0) >= 10
    if name.startswith("revocation_visible@"):
        return row["calls"] > 0 and row["p99_ms"] < 1000 and not row.get("other_errors")
    if name.startswith("offered_"):  # CANCELLED or any other failure is a write lost too
        return (not row["refused"] or row["refused_p99_ms"] < 50) and row["timeouts_unavailable"] == 0 \
            and not row["other_errors"]
    return False
