"""`latchkey health` names each service's readiness and its dependencies, and exits as
ops/cli_errors.py says: 0 all SERVING, 5 a service that does not answer (also for
`--liveness`, which accepts NOT_SERVING but not silence)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from ops import cli_errors


def latchkey(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def client_env(pki, tmp_path):
    return {**os.environ, "LATCHKEY_STATE_DIR": str(tmp_path), "LATCHKEY_CERTS_DIR": str(pki.dir),
            "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
            "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "auditor.pem"),
            "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "auditor-key.pem")}


def test_health_lists_every_service_serving_with_the_dependencies_it_reports(system, client_env):
    # The running system: every service SERVING, each with the dependencies it depends on.
    env = client_env | {f"LATCHKEY_{name.upper()}_TARGET": target for name, target in system.targets.items()}
    result = latchkey("health", "--output", "json", env=env)
    assert result.returncode == cli_errors.OK, result.stdout + result.stderr
    services = {s["service"]: s for s in json.loads(result.stdout)["services"]}
    assert {name: s["status"] for name, s in services.items()} == dict.fromkeys(system.targets, "SERVING")
    cql = system.backend == "cql"
    assert set(services["permissions"]["dependencies"]) == {"postgresql", "nats", "outbox_relay"}
    assert set(services["access"]["dependencies"]) == {"redis", "nats"} | ({"view"} if cql else set())
    assert set(services["audit"]["dependencies"]) == {"nats"} | ({"audit_store"} if cql else set())
    assert all(s["down"] == [] and set(s["dependencies"].values()) == {"SERVING"} for s in services.values())

    # The text form: one line per service, its target and its status.
    text = latchkey("health", "--only", "access", env=env)
    assert text.returncode == cli_errors.OK
    assert text.stdout.split() == ["access", system.targets["access"], "SERVING"]


@pytest.mark.parametrize("liveness", [False, True], ids=["readiness", "liveness"])
def test_a_service_that_does_not_answer_is_exit_5(client_env, liveness):
    # Nothing listens on the target: not a failed check (1) but an unreachable service (5).
    env = client_env | {"LATCHKEY_AUDIT_TARGET": f"localhost:{free_port()}"}
    result = latchkey("health", "--only", "audit", *(["--liveness"] if liveness else []), env=env)
    assert result.returncode == cli_errors.UNREACHABLE, result.stdout + result.stderr
    assert "UNAVAILABLE" in result.stdout
