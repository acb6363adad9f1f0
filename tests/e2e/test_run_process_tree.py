"""`latchkey run` (what `make run` ends with): one instance at a time, and no service outlives it.

It runs on a private stack of its own: its services must not share the test
system's JetStream consumers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from devstack.stack import Stack, StackPorts, free_port
from latchkit import endpoints
from latchkit.settings import REPO_ROOT
from ops.run import health_of

LATCHKEY = [sys.executable, "-c", "from ops.cli import main; main()"]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run_env(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("latchkey-run")
    # PostgreSQL runs as its own user, which cannot enter pytest's private temporary directory.
    stack = Stack(REPO_ROOT / ".state" / f"test-run-{uuid.uuid4().hex[:8]}", StackPorts.free())
    urls = stack.up()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_SCYLLA_")},
           "LATCHKEY_STATE_DIR": str(root / "state"), "LATCHKEY_CERTS_DIR": str(pki.dir),
           "LATCHKEY_POSTGRES_DSN": urls.postgres_dsn, "LATCHKEY_REDIS_URL": urls.redis_url,
           "LATCHKEY_NATS_URL": urls.nats_url, "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_LOG_LEVEL": "WARNING"}
    for e in endpoints.ALL:
        env[f"{e.env_prefix}_PORT"] = str(free_port())
        env[f"{e.env_prefix}_METRICS_PORT"] = "0"
    subprocess.run([*LATCHKEY, "migrate"], env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    client = {"LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"), "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "admin.pem"),
              "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "admin-key.pem")}
    saved = {k: os.environ.get(k) for k in client}
    os.environ.update(client)  # this process's health checks present the admin certificate
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    stack.down()
    shutil.rmtree(stack.state_dir, ignore_errors=True)


def start(env) -> tuple[subprocess.Popen, list[int]]:
    """`latchkey run`, once every service is SERVING; returns it and its service processes."""
    proc = subprocess.Popen([*LATCHKEY, "run"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    targets = [f"localhost:{env[f'{e.env_prefix}_PORT']}" for e in endpoints.ALL]
    wait_until(lambda: proc.poll() is None and all(health_of(t, timeout=0.5) == "SERVING" for t in targets)
               or proc.poll() is not None, "all three services SERVING", 60)
    assert proc.poll() is None, proc.stdout.read()
    services = children(proc.pid)
    assert len(services) == 3, services
    return proc, services


def tree(pids: list[int]) -> list[int]:
    """The services and their own children (access's second worker, the permissions outbox relay)."""
    return pids + [c for p in pids for c in children(p)]


def test_a_second_run_refuses_to_start_and_sigterm_stops_everything(run_env):
    # 1. One instance serves.
    first, services = start(run_env)
    everything = tree(services)
    assert len(everything) == 5  # permissions and its relay, access and its worker, audit
    # 2. A second one says why it cannot start, starts nothing, and leaves the first serving.
    second = subprocess.run([*LATCHKEY, "run"], env=run_env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2
    assert "already running" in second.stdout and str(first.pid) in second.stdout
    assert all(alive(p) for p in everything)
    # 3. SIGTERM (what `kill <pid>` sends) stops the services gracefully, and `latchkey run` exits 0.
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    wait_until(lambda: not any(alive(p) for p in everything), "no service left after SIGTERM")


def test_no_service_outlives_a_killed_run(run_env):
    # 1. An instance serves.
    run, services = start(run_env)
    everything = tree(services)
    # 2. It is killed outright (no handler runs): the kernel stops its children, and theirs.
    run.kill()
    run.wait(timeout=10)
    wait_until(lambda: not any(alive(p) for p in everything), "no service left after SIGKILL of latchkey run")
