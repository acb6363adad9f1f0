"""Run the whole system locally: what `make run` ends with."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from latchkit import endpoints, health, process
from latchkit import settings as lk_settings
from latchkit.tls import channel_credentials
from ops import cli_errors

SERVICE_MODULES = {e.service: f"services.{e.service}" for e in endpoints.ALL}


def stack_env() -> dict[str, str]:
    """The environment that points services at the local stack (explicit settings win)."""
    from devstack.stack import Stack

    stack = Stack(lk_settings.state_dir())
    urls = stack.urls()
    defaults = {
        "LATCHKEY_POSTGRES_DSN": urls.postgres_dsn,
        "LATCHKEY_REDIS_URL": urls.redis_url,
        "LATCHKEY_NATS_URL": urls.nats_url,
        "LATCHKEY_STATE_DIR": str(lk_settings.state_dir()),
    }
    if stack.cql_enabled:
        # `latchkey stack up --cql`: the view and the audit store live in the local CQL engine.
        defaults |= {**stack.scylla_env(), "LATCHKEY_SCYLLA_REPLICATION_FACTOR": "1"}
    return {**defaults, **{k: v for k, v in os.environ.items() if k in defaults}}


def migrate_all() -> None:
    """Each service that owns a schema exposes `migrations.upgrade(env)`."""
    from services.access import migrations as access
    from services.audit import migrations as audit
    from services.permissions import migrations as permissions

    env = {**os.environ, **stack_env()}
    for migrations in (permissions, access, audit):
        migrations.upgrade(env)


def _admin_tls() -> lk_settings.TlsSettings:
    return lk_settings.TlsSettings.for_identity("admin", prefix="LATCHKEY_CLIENT")


def health_of(target: str, timeout: float = 2.0) -> str:
    with grpc.secure_channel(target, channel_credentials(_admin_tls())) as channel:
        return _status(health_pb2_grpc.HealthStub(channel), "", timeout)


def _status(stub, name: str, timeout: float) -> str:
    """The serving status of `name`, or the gRPC code when the check itself failed."""
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@dataclass
class ServiceHealth:
    service: str
    target: str
    status: str
    """SERVING, NOT_SERVING, or the gRPC code of a check that got no answer (UNAVAILABLE, ...)."""
    dependencies: dict[str, str] = field(default_factory=dict)
    """The status of each dependency the service reports (latchkit/health.py)."""

    @property
    def reachable(self) -> bool:
        return self.status in ("SERVING", "NOT_SERVING")

    @property
    def down(self) -> list[str]:
        return [name for name, status in self.dependencies.items() if status != "SERVING"]


def service_health(service: str, target: str, timeout: float = 2.0) -> ServiceHealth:
    """The service's readiness and, if it answers, each of its dependencies (NOT_FOUND: not one of its)."""
    with grpc.secure_channel(target, channel_credentials(_admin_tls())) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        result = ServiceHealth(service, target, _status(stub, "", timeout))
        if result.reachable:
            for name in health.DEPENDENCIES:
                status = _status(stub, health.DEPENDENCY_PREFIX + name, timeout)
                if status != "NOT_FOUND":
                    result.dependencies[name] = status
        return result


def check_health(console: Console, only: str = "", output: str = "text", liveness: bool = False) -> int:
    """Print each service's health; returns the exit code (ops/cli_errors.py): 5 if one did not
    answer, 1 if one is not SERVING (with `liveness`, answering at all is enough), else 0."""
    results = [service_health(e.service, e.target) for e in endpoints.ALL if not only or e.service == only]
    if output == "json":
        print(json.dumps({"services": [{**asdict(r), "down": r.down} for r in results]}, indent=2))
    for r in results if output == "text" else ():
        line = f"{r.service:12} {r.target:18} {r.status}"
        if r.down:
            # Down and SERVING: the service still does its main job without it (degraded).
            line += f"  {'degraded' if r.status == 'SERVING' else 'down'}: {', '.join(r.down)}"
        console.print(line, highlight=False)
    if not all(r.reachable for r in results):
        return cli_errors.UNREACHABLE
    if not liveness and any(r.status != "SERVING" for r in results):
        return cli_errors.CHECK_FAILED
    return cli_errors.OK


def _wait_healthy(procs: dict[str, subprocess.Popen], deadline_s: float = 60.0) -> bool:
    deadline = time.monotonic() + deadline_s
    pending = {e.service: e for e in endpoints.ALL}
    while pending and time.monotonic() < deadline:
        for name, endpoint in list(pending.items()):
            if procs[name].poll() is not None:
                return False
            if health_of(endpoint.target, timeout=0.5) == "SERVING":
                del pending[name]
        if pending:
            time.sleep(0.2)
    return not pending


def _summary(console: Console) -> None:
    certs = lk_settings.state_dir() / "certs"
    table = Table(title="Latchkey is running (mTLS; certificates in " + str(certs) + ")")
    for column in ("service", "gRPC endpoint", "metrics (https, client cert)"):
        table.add_column(column)
    for e in endpoints.ALL:
        table.add_row(e.service, e.target, f"https://localhost:{e.default_metrics_port}/metrics")
    console.print(table)
    # Plain print, never wrapped: the commands must paste as they are, in a terminal or not.
    print(
        "Try it (mTLS; reflection, so no proto files needed):\n"
        f"  tools/buf/node_modules/.bin/buf curl --protocol grpc --cacert {certs}/ca.pem "
        f"--cert {certs}/admin.pem --key {certs}/admin-key.pem "
        f"https://localhost:{endpoints.PERMISSIONS.port}/grpc.health.v1.Health/Check\n"
        "  scripts/first-day.sh    # a door, a user, a grant, Unlock, revoke, the audit log (README)\n"
        "  .venv/bin/latchkey health\n"
        "Ctrl-C stops the services; `make stack-down` stops the stack.",
        flush=True,
    )


class Stopping(Exception):
    """SIGTERM or SIGHUP reached `latchkey run`: stop the services as Ctrl-C does."""


def _stop_on(signum, frame) -> None:
    raise Stopping(signal.Signals(signum).name)


def already_running() -> str | None:
    """Why another instance holds this machine's service ports, or None if they are free."""
    pidfile = lk_settings.state_dir() / "run.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid():
        return f"`latchkey run` is already running (pid {pid}); stop it with Ctrl-C in its terminal or `kill {pid}`"
    for e in endpoints.ALL:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", e.port)) == 0:
                return f"port {e.port} ({e.service}) is already in use: is Latchkey running elsewhere?"
    return None


def run_all(console: Console) -> int:
    busy = already_running()
    if busy:
        console.print(f"[red]{busy}[/red]")
        return 2
    env = {**os.environ, **stack_env()}
    pidfile = lk_settings.state_dir() / "run.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(os.getpid()))
    # `make run` is our parent: when it is killed, so are we (and so, in turn, the services).
    process.die_with_parent(os.getppid())
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, module in SERVICE_MODULES.items():
            procs[name] = subprocess.Popen([sys.executable, "-m", module], env=env,
                                           preexec_fn=process.preexec_die_with_parent())
        if not _wait_healthy(procs):
            console.print("[red]a service did not become healthy; see its log above[/red]")
            return 1
        _summary(console)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        console.print("[red]a service exited[/red]")
        return 1
    except (KeyboardInterrupt, Stopping):
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        process.stop_all(procs.values(), grace_s=15)
        pidfile.unlink(missing_ok=True)
