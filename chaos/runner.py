"""One chaos run: start the system, load it, inject each fault in turn, then check the invariants."""

from __future__ import annotations

import collections
import random
import shutil
import threading
import time

import grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from chaos import faults as fault_catalogue
from chaos import invariants
from chaos.clients import Admin, Door
from chaos.load import Controller, Record, Writer
from chaos.model import World, user_key
from chaos.system import ChaosSystem
from latchkit.settings import REPO_ROOT
from ops.run import health_of

CONTROLLERS = 6
UNLOCKS_PER_S = 80.0
WRITES_PER_S = 5.0
LANES = 5
"""Requests each controller keeps in flight: Unlock's latency on a loaded 2-core machine would
otherwise cap the rate below UNLOCKS_PER_S."""
RECOVERY_LIMIT_S = 90.0


class Probe:
    """A door and a user of the harness's own: "a fresh write is visible" is a grant to this user,
    acknowledged with revision r, then Unlock with min_revision r answering GRANTED."""

    def __init__(self, cs: ChaosSystem, record: Record) -> None:
        self.admin = Admin(cs.system, cs.pki)
        self.record = record
        self.user = self.admin.user("probe").user_id
        self.door_id = self.admin.door("UTC").door_id
        self.door = Door(cs.system, cs.pki, self.door_id)
        self.grant_id = ""
        self.obstacle = ""
        """What the last attempt ran into (for a recovery that never came)."""

    def fresh_write_visible(self, deadline: float) -> bool:
        try:
            if self.grant_id:
                revision = self.admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=self.grant_id)).revision
                self.record.ack("probe RevokeAccess", revision)
                self.grant_id = ""
            answer = self.admin.grant(self.user, self.door_id)
            self.record.ack("probe GrantAccess", answer.revision)
            self.grant_id = answer.grant.grant_id
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    reply = self.door.unlock(user_id=self.user, min_revision=answer.revision, timeout=3)
                except grpc.RpcError as exc:
                    self.obstacle = f"Unlock: {exc.code().name} {exc.details()}"[:160]
                    time.sleep(0.1)
                    continue
                self.record.answers.append((sent, self.door_id, user_key(self.user), reply.decision,
                                            reply.decision_id, time.monotonic() - sent, reply.view_revision))
                if reply.decision == ev.DECISION_GRANTED:
                    return True
                self.obstacle = f"Unlock answered {ev.DecisionReason.Name(reply.reason)} at {reply.view_revision}"
                time.sleep(0.1)
        except grpc.RpcError as exc:
            self.obstacle = f"write: {exc.code().name} {exc.details()}"[:160]
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self.admin.close()
        self.door.close()


def recover(cs: ChaosSystem, probe: Probe) -> float | None:
    """Seconds until every service is SERVING and a fresh write is visible to Unlock (None: not within
    RECOVERY_LIMIT_S)."""
    started = time.monotonic()
    deadline = started + RECOVERY_LIMIT_S
    while time.monotonic() < deadline:
        health = {name: health_of(t, timeout=0.5) for name, t in cs.system.targets.items()}
        if set(health.values()) != {"SERVING"}:
            probe.obstacle = f"health {health}"
        elif probe.fresh_write_visible(deadline):
            return round(time.monotonic() - started, 2)
        time.sleep(0.05)
    return None


def run(rounds: int = 3, names: tuple[str, ...] | None = None, hold_s: float = 3.0, seed: int = 1) -> dict:
    chosen = fault_catalogue.pick(names)
    cs = ChaosSystem()
    record = Record()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    outages: list[tuple[float, float]] = []
    faults: list[dict] = []
    errors_between: list[int] = []
    windows: list[tuple[float, float, str]] = []
    result: dict = {"id": cs.id, "rounds": rounds, "hold_s": hold_s}
    started = time.monotonic()
    keep = REPO_ROOT / "chaos-results" / f"chaos-{cs.id}-logs"
    try:
        system = cs.up()
        result["spool_disk_full_by"] = "tmpfs" if cs.tmpfs else "RLIMIT_FSIZE"
        admin = Admin(system, cs.pki)
        doors = [admin.door("UTC").door_id for _ in range(CONTROLLERS)]
        admin.close()
        world = World(doors=doors)
        probe = Probe(cs, record)
        writer = Writer(system, cs.pki, world, record, rate=WRITES_PER_S, seed=seed)
        controllers = [Controller(system, cs.pki, d, world, record, UNLOCKS_PER_S / CONTROLLERS, seed + i)
                       for i, d in enumerate(doors)]
        threads = [threading.Thread(target=writer.run, args=(stop,), daemon=True)]
        threads += [threading.Thread(target=c.run, args=(stop, LANES), daemon=True)
                    for c in controllers for _ in range(LANES)]
        for t in threads:
            t.start()
        stop.wait(5)  # the admin builds a world first
        load_started = time.monotonic()
        order = random.Random(seed)
        for round_no in range(rounds):
            for fault in order.sample(chosen, len(chosen)):
                notes: dict = {}
                injected = time.monotonic()
                fault.inject(cs, notes)
                stop.wait(hold_s)
                fault.restore(cs, notes)
                returned = time.monotonic()
                if fault.bus_outage:
                    outages.append((injected, returned))
                probe.obstacle = ""
                took = recover(cs, probe)
                errors = sum(1 for t, _ in record.unlock_errors if t >= injected)
                windows.append((injected, returned, fault.name))
                faults.append({"round": round_no + 1, "fault": fault.name, "recovery_s": took,
                               "outage_s": round(returned - injected, 2), "unlock_errors": errors,
                               **({"stuck_on": probe.obstacle} if took is None else {}),
                               **{k: v for k, v in notes.items() if k not in ("pids", "workers", "killed")}})
                print(f"round {round_no + 1} {fault.name:22} outage {returned - injected:5.1f} s  "
                      f"recovered in {took if took is not None else 'NEVER'} s", flush=True)
                stop.wait(2)
                errors_between.append(sum(1 for t, _ in record.unlock_errors if t >= injected) - errors)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for c in controllers:
            c.door.close()
        probe.close()
        result["load"] = load_figures(record, time.monotonic() - load_started)
        log = invariants.settle(system.targets["audit"], cs.pki, record)
        result["invariants"] = invariants.check(record, world, log, outages)
        result["late_grant_examples"] = [{**e, "after": last_fault(windows, e["sent_s"])}
                                         for e in result["invariants"].pop("examples")]
        ok, checked, detail = invariants.verify_chain(system.targets["audit"], cs.pki)
        result["chain"] = {"ok": ok, "events_checked": checked, "first_break": detail}
        result["unlock_errors"] = dict(collections.Counter(code for _, code in record.unlock_errors))
        result["unlock_errors_while_healthy"] = sum(errors_between)
        result["unknown_writes"] = len(record.unknown_writes)
        result["refused_writes"] = record.refused_writes
        result["answers"] = len(record.answers)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        result["faults"] = faults
        result["left_behind"] = cs.down(keep_logs=keep)
        result["logs"] = str(keep.relative_to(REPO_ROOT))
        result["seconds"] = round(time.monotonic() - started, 1)
        result["promise_s"] = invariants.REVOKE_PROMISE_S
        result["recovery_promise_s"] = invariants.RECOVERY_PROMISE_S
        result["promise_source"] = invariants.REVOKE_PROMISE_SOURCE
    result["failures"] = failures(result)
    if not result["failures"]:
        shutil.rmtree(keep, ignore_errors=True)
        result.pop("logs")
    return result


def last_fault(windows: list[tuple[float, float, str]], t: float) -> str:
    before = [w for w in windows if w[0] <= t]
    if not before:
        return "no fault yet"
    injected, returned, name = before[-1]
    return f"{name}: sent {t - returned:+.2f} s after it returned"


def load_figures(record: Record, seconds: float) -> dict:
    latencies = sorted(a[5] for a in record.answers)
    at = (lambda q: round(latencies[int(q * (len(latencies) - 1))] * 1000, 1)) if latencies else (lambda q: 0)
    return {"unlocks_per_s": round(len(record.answers) / seconds, 1),
            "writes_per_s": round(len(record.acked) / seconds, 1),
            "unlock_p50_ms": at(0.5), "unlock_p99_ms": at(0.99)}


def failures(result: dict) -> list[str]:
    found = [f"{name} = {result['invariants'][name]}" for name in invariants.FAILING_WHEN_NONZERO
             if result.get("invariants", {}).get(name)]
    found += [f"no recovery within {RECOVERY_LIMIT_S:.0f} s after {f['fault']} (round {f['round']})"
              for f in result["faults"] if f["recovery_s"] is None]
    if not result.get("chain", {}).get("ok"):
        found.append(f"audit chain: {result.get('chain')}")
    if result["left_behind"]:
        found.append(f"processes left behind: {result['left_behind']}")
    return found

