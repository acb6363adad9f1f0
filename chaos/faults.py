"""The faults, one at a time: each `inject` breaks one thing, `restore` brings it back.

`restore` returns when the component is back (restarted or resumed); the
runner measures recovery from that moment. A fault that takes the bus path
(outbox relay -> NATS -> projector) away is a bus outage: revocations
acknowledged around it are owed only after it ends (see `model.promise_deadline`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from chaos.system import ChaosSystem, alive, children, reap

BALLAST = "chaos-ballast"


@dataclass
class Fault:
    name: str
    inject: Callable[[ChaosSystem, dict], None]
    restore: Callable[[ChaosSystem, dict], None]
    bus_outage: bool = False


def _wait_dead(pids: list[int], limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        for p in pids:
            reap(p)
        time.sleep(0.05)


# ---- the services ------------------------------------------------------------------------
def kill_service(name: str) -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        # The whole service crashes: for access, its main process and every worker at once.
        pids = [cs.system.procs[name].pid] + (cs.access_pids()[1] if name == "access" else [])
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        cs.system.procs[name].wait(timeout=10)
        _wait_dead(pids)

    return Fault(f"kill {name}", inject, lambda cs, notes: cs.start(name, wait=False),
                 bus_outage=name == "permissions")


def _restart_access(cs: ChaosSystem) -> None:
    proc = cs.system.procs["access"]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
    cs.start("access", wait=False)


def kill_access_worker() -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        main, workers = cs.access_pids()
        notes["killed"] = workers[-1]
        os.kill(workers[-1], signal.SIGKILL)

    def restore(cs: ChaosSystem, notes: dict) -> None:
        # The main process does not restart a worker (noted); a graceful restart of the service
        # brings the second worker back, and with it that worker's decision spool.
        notes["worker_respawned"] = len([w for w in cs.access_pids()[1] if alive(w)]) == cs.workers - 1
        _restart_access(cs)

    return Fault("kill access worker", inject, restore)


def kill_access_main() -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        main, workers = cs.access_pids()
        notes["workers"] = workers
        os.kill(main, signal.SIGKILL)
        cs.system.procs["access"].wait(timeout=10)

    def restore(cs: ChaosSystem, notes: dict) -> None:
        # A worker whose main process died keeps the port (and its own spool); say whether it stayed,
        # then end it gracefully so the restarted service owns both.
        orphans = [w for w in notes["workers"] if alive(w)]
        notes["orphaned_workers"] = len(orphans)
        for w in orphans:
            os.kill(w, signal.SIGTERM)
        _wait_dead(orphans, 30)
        cs.start("access", wait=False)

    return Fault("kill access main", inject, restore)


def kill_outbox_relay() -> Fault:
    """The permissions service's relay child alone dies; its parent starts another."""
    def relays(cs: ChaosSystem) -> list[int]:
        return children(cs.system.procs["permissions"].pid)

    def inject(cs: ChaosSystem, notes: dict) -> None:
        killed = relays(cs)
        notes["killed"] = killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        _wait_dead(killed)

    def restore(cs: ChaosSystem, notes: dict) -> None:
        # Nothing to do but wait for the parent: it starts a new relay by itself.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fresh = [p for p in relays(cs) if p not in notes["killed"] and alive(p)]
            if fresh:
                notes["respawned"] = fresh
                return
            time.sleep(0.05)  # polling for a process to appear: no event announces it
        notes["respawned"] = []

    # The relay is the bus path's first hop: revocations around its death are owed after it is back.
    return Fault("kill outbox relay", inject, restore, bus_outage=True)


# ---- the stack ---------------------------------------------------------------------------
def kill_stack(name: str) -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        pid = cs.stack_pid(name)
        os.kill(pid, signal.SIGKILL)
        _wait_dead([pid])

    return Fault(f"kill {name}-server", inject, lambda cs, notes: cs.stack.start_component(name),
                 bus_outage=name == "nats")


def freeze_stack(name: str) -> Fault:
    return Fault(f"stop {name}-server", lambda cs, notes: os.kill(cs.stack_pid(name), signal.SIGSTOP),
                 lambda cs, notes: os.kill(cs.stack_pid(name), signal.SIGCONT), bus_outage=name == "nats")


def kill_postgres() -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        pids = cs.postgres_pids()
        os.kill(pids[0], signal.SIGKILL)
        # Its backends leave when they notice; until then a new postmaster would refuse to start.
        _wait_dead(pids, 30)

    def restore(cs: ChaosSystem, notes: dict) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                cs.stack.up()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    return Fault("kill postgres", inject, restore, bus_outage=True)


def freeze_postgres() -> Fault:
    def inject(cs: ChaosSystem, notes: dict) -> None:
        notes["pids"] = cs.postgres_pids()
        for pid in notes["pids"]:
            os.kill(pid, signal.SIGSTOP)

    def restore(cs: ChaosSystem, notes: dict) -> None:
        for pid in reversed(notes["pids"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    return Fault("stop postgres", inject, restore, bus_outage=True)


# ---- the decision spool's disk -----------------------------------------------------------
def spool_disk_full() -> Fault:
    """The access data directory full while NATS is away, so decisions must go to the spool."""

    log = "access.log"

    def inject(cs: ChaosSystem, notes: dict) -> None:
        notes["log_from"] = (cs.logs / log).stat().st_size
        if cs.tmpfs:
            notes["how"] = "tmpfs filled"
            with open(cs.state / "services" / "access" / BALLAST, "wb") as fh:
                chunk = b"\0" * (1 << 20)
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(chunk)
                        fh.flush()
        else:
            notes["how"] = "RLIMIT_FSIZE=0 on the access processes"
            main, workers = cs.access_pids()
            for pid in (main, *workers):
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        cs.stack.stop_component("nats")

    def restore(cs: ChaosSystem, notes: dict) -> None:
        if cs.tmpfs:
            (cs.state / "services" / "access" / BALLAST).unlink()
        else:
            main, workers = cs.access_pids()
            for pid in (main, *workers):
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        cs.stack.start_component("nats")
        with open(cs.logs / log, "rb") as fh:
            fh.seek(notes.pop("log_from"))
            notes["spool_write_failures_logged"] = fh.read().count(b"decision spool write failed")

    return Fault("spool disk full", inject, restore, bus_outage=True)


def all_faults() -> list[Fault]:
    return [kill_service("access"), kill_service("audit"), kill_service("permissions"),
            kill_stack("nats"), kill_stack("redis"), kill_postgres(),
            kill_access_worker(), kill_access_main(), kill_outbox_relay(),
            freeze_postgres(), freeze_stack("redis"), freeze_stack("nats"), spool_disk_full()]


SHORT = ("kill access", "kill access main", "kill access worker", "kill nats-server", "stop redis-server",
         "kill postgres", "spool disk full")
"""`make test`'s one round: the faults behind today's known failures, and the spool's disk."""


def pick(names: tuple[str, ...] | None) -> list[Fault]:
    faults = all_faults()
    if not names:
        return faults
    unknown = set(names) - {f.name for f in faults}
    if unknown:
        raise SystemExit(f"unknown faults: {sorted(unknown)}; known: {[f.name for f in faults]}")
    return [f for f in faults if f.name in names]

