"""The whole system as a user runs it: `python -m services.<name>` processes on the test stack.

One session fixture for every suite that needs it (tests/e2e, tests/blackbox), registered in
tests/conftest.py: two definitions would start two systems on the same streams, each
publishing its own database's revisions into the other's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devstack.stack import free_port
from latchkit import endpoints, process
from latchkit.bus import purge_streams
from latchkit.settings import REPO_ROOT
from ops.run import health_of
from tests.integration.conftest import fresh_database


@dataclass
class System:
    targets: dict[str, str]
    env: dict[str, str]
    procs: dict[str, subprocess.Popen]
    backend: str = "embedded"
    """embedded, or cql: the unlock view and the audit log in the test CQL engine."""

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        self.procs[name].kill()
        self.procs[name].wait(timeout=10)

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=self.env, cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while health_of(self.targets[name], timeout=0.5) != "SERVING":
            assert self.procs[name].poll() is None, f"{name} exited"
            assert time.monotonic() < deadline, f"{name} not healthy within 30 s"
            time.sleep(0.05)


@pytest.fixture(scope="session", params=["embedded", "cql"])
def system(request, stack, pki, tmp_path_factory):
    """The system on the embedded stores, then once more with the view and the audit log in the CQL engine."""
    state = tmp_path_factory.mktemp(f"system-state-{request.param}")
    urls = stack.urls()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_SCYLLA_")},
        "LATCHKEY_STATE_DIR": str(state),
        "LATCHKEY_CERTS_DIR": str(pki.dir),
        # A database of its own: each leg's view starts empty and needs every revision from 1,
        # on streams purged below (revisions carried over from another leg would never arrive).
        "LATCHKEY_POSTGRES_DSN": fresh_database(urls),
        "LATCHKEY_REDIS_URL": urls.redis_url,
        "LATCHKEY_NATS_URL": urls.nats_url,
        "LATCHKEY_ACCESS_WORKERS": "1",
        "LATCHKEY_LOG_LEVEL": "WARNING",
    }
    if request.param == "cql":
        cql = request.getfixturevalue("cql_settings")
        # Its own keyspace; `latchkey migrate` applies the CQL schemas because the factor is set.
        env |= {"LATCHKEY_SCYLLA_HOSTS": ",".join(cql.hosts), "LATCHKEY_SCYLLA_PORT": str(cql.port),
                "LATCHKEY_SCYLLA_KEYSPACE": f"lk_e2e_{uuid.uuid4().hex[:8]}",
                "LATCHKEY_SCYLLA_REPLICATION_FACTOR": "1",
                # The engine shares two cores with the whole suite: allow it a slow second.
                "LATCHKEY_SCYLLA_REQUEST_TIMEOUT_SECONDS": "5"}
    # The integration tests publish from databases of their own into the same streams, each
    # with its own revisions: the system starts on empty streams, whichever ran first.
    asyncio.run(purge_streams(urls.nats_url))
    with running_services(env, pki) as (targets, procs):
        yield System(targets=targets, env=env, procs=procs, backend=request.param)


@contextlib.contextmanager
def running_services(env: dict[str, str], pki) -> Iterator[tuple[dict[str, str], dict[str, subprocess.Popen]]]:
    """`(targets, processes)`: the three services from their entry points on free ports, migrated
    first exactly as `make run` does, each SERVING; stopped (SIGTERM, then SIGKILL) on exit.
    `env` gets the ports; the client certificate `health_of` uses is the admin's meanwhile."""
    for e in endpoints.ALL:
        env[f"{e.env_prefix}_PORT"] = str(free_port())
        env[f"{e.env_prefix}_METRICS_PORT"] = "0"
    targets = {e.service: f"localhost:{env[f'{e.env_prefix}_PORT']}" for e in endpoints.ALL}
    subprocess.run([sys.executable, "-m", "ops.cli_migrate"], env=env, cwd=REPO_ROOT, check=True)
    procs = {
        name: subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=REPO_ROOT)
        for name in targets
    }
    client_env = {"LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
                  "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "admin.pem"),
                  "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "admin-key.pem")}
    old = {k: os.environ.get(k) for k in client_env}
    os.environ.update(client_env)
    try:
        deadline = time.monotonic() + 60
        pending = dict(targets)
        while pending and time.monotonic() < deadline:
            for name, target in list(pending.items()):
                assert procs[name].poll() is None, f"{name} exited with {procs[name].returncode}"
                if health_of(target, timeout=0.5) == "SERVING":
                    del pending[name]
            time.sleep(0.1)
        assert not pending, f"not healthy within 60 s: {sorted(pending)}"
        yield targets, procs
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        process.stop_all(procs.values(), grace_s=15)
