"""The system under test: a private stack and the three services as processes, under .state/chaos-<id>/.

Everything listens on loopback on free ports. As root, the access service's
data directory (unlock view, decision spools) is a small tmpfs of its own, so
the "disk full" fault can fill it for real; elsewhere that fault caps the
access processes' file size instead (RLIMIT_FSIZE), and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devstack.stack import Stack, StackPorts, free_port
from latchkit import endpoints
from latchkit.settings import REPO_ROOT
from ops.run import health_of
from tests.conftest import Pki
from tests.system import System

ACCESS_WORKERS = 2
TMPFS_BYTES = 64 * 1024 * 1024


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    with contextlib.suppress(OSError):
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    return False


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class ChaosSystem:
    def __init__(self, workers: int = ACCESS_WORKERS) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.state = REPO_ROOT / ".state" / f"chaos-{self.id}"
        self.stack = Stack(self.state / "stack", StackPorts.free())
        self.workers = workers
        self.tmpfs = False
        self.seen_pids: set[int] = set()
        self.logs = self.state / "logs"
        self.system: System | None = None
        self.pki: Pki | None = None
        self._old_env: dict[str, str | None] = {}

    # ---- start and stop ------------------------------------------------------------------
    def up(self) -> System:
        self.logs.mkdir(parents=True, exist_ok=True)
        urls = self.stack.up()
        self.pki = Pki(self.state / "pki")
        services_state = self.state / "services"
        (services_state / "access").mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs",
                                      str(services_state / "access")], capture_output=True)
            self.tmpfs = mounted.returncode == 0
        env = {
            **os.environ,
            "LATCHKEY_STATE_DIR": str(services_state),
            "LATCHKEY_CERTS_DIR": str(self.pki.dir),
            "LATCHKEY_POSTGRES_DSN": urls.postgres_dsn,
            "LATCHKEY_REDIS_URL": urls.redis_url,
            "LATCHKEY_NATS_URL": urls.nats_url,
            "LATCHKEY_ACCESS_WORKERS": str(self.workers),
            "LATCHKEY_ACCESS_INSTANCE": f"chaos-{self.id}",
            # The denial throttle would turn the controllers' random subjects into RATE_LIMITED
            # answers and hide what the faults do; it has tests of its own.
            "LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS": "1000000000",
            "LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS": "1000000000",
            "LATCHKEY_LOG_LEVEL": "WARNING",
        }
        for e in endpoints.ALL:
            env[f"{e.env_prefix}_HOST"] = "127.0.0.1"
            env[f"{e.env_prefix}_PORT"] = str(free_port())
            env[f"{e.env_prefix}_METRICS_PORT"] = "0"
        targets = {e.service: f"127.0.0.1:{env[f'{e.env_prefix}_PORT']}" for e in endpoints.ALL}
        client = {"LATCHKEY_CLIENT_TLS_CA": "ca.pem", "LATCHKEY_CLIENT_TLS_CERT": "admin.pem",
                  "LATCHKEY_CLIENT_TLS_KEY": "admin-key.pem"}
        self._old_env = {k: os.environ.get(k) for k in client}
        os.environ.update({k: str(self.pki.dir / v) for k, v in client.items()})
        subprocess.run([sys.executable, "-m", "ops.cli_migrate"], env=env, cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        self.system = System(targets=targets, env=env, procs={})
        for name in targets:
            self.start(name, wait=False)
        for name in targets:
            self.wait_serving(name, 60)
        return self.system

    def start(self, name: str, wait: bool = True) -> None:
        """Start one service with its output in logs/<name>.log (a fault makes them chatty)."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=self.system.env,
                                    cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.system.procs[name] = proc
        self.seen_pids.add(proc.pid)
        if wait:
            self.wait_serving(name, 30)

    def wait_serving(self, name: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while health_of(self.system.targets[name], timeout=0.5) != "SERVING":
            if self.system.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.system.procs[name].returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not serving within {limit_s:.0f} s")
            time.sleep(0.05)

    def access_pids(self) -> tuple[int, list[int]]:
        main = self.system.procs["access"].pid
        workers = children(main)
        self.seen_pids.update(workers)
        return main, workers

    def postgres_pids(self) -> list[int]:
        """The postmaster, then its children (backends, writer, walwriter...)."""
        pidfile = self.stack.state_dir / "postgres" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            if alive(pid):
                pids = [pid, *children(pid)]
                self.seen_pids.update(pids)
                return pids
        return []

    def stack_pid(self, name: str) -> int:
        pid = self.stack.pid(name)
        self.seen_pids.add(pid)
        return pid

    def down(self, keep_logs: Path | None = None) -> list[str]:
        """Stop everything; what is still running afterwards (pids seen during the run, or any process
        naming the run's directory) is returned, described, and then killed. The services' and the
        stack's logs are copied to `keep_logs` first."""
        if self.system is not None:
            for name, proc in self.system.procs.items():
                if proc.poll() is None:
                    if name == "access":
                        self.access_pids()  # its workers, to be sure they end with it
                    proc.send_signal(signal.SIGTERM)
            for proc in self.system.procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in ("redis", "nats"):
            with contextlib.suppress(Exception):
                self.stack_pid(name)
        self.postgres_pids()
        with contextlib.suppress(Exception):
            self.stack.down()
        for pid in list(self.seen_pids):
            reap(pid)
        left = self.left_behind()
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.state / "services" / "access")], capture_output=True)
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if keep_logs is not None:
            shutil.copytree(self.logs, keep_logs, dirs_exist_ok=True)
            shutil.copytree(self.stack.state_dir / "logs", keep_logs / "stack", dirs_exist_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)
        return [f"{pid} {cmd}" for pid, cmd in left]

    def left_behind(self) -> list[tuple[int, str]]:
        deadline = time.monotonic() + 10  # a killed postmaster's backends take a moment to notice
        while True:
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == os.getpid() or not alive(int(entry.name)):
                    continue
                with contextlib.suppress(OSError):
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    env = (entry / "environ").read_bytes()
                    if int(entry.name) in self.seen_pids or str(self.state).encode() in env + cmd.encode():
                        found.append((int(entry.name), cmd.strip()))
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
