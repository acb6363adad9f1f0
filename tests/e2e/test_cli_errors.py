"""The `latchkey` command's failures: one clear line each, and an exit code per kind (ops/cli_errors.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from ops import cli_errors


def latchkey(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(pki, tmp_path):
    import os

    return {**os.environ, "LATCHKEY_STATE_DIR": str(tmp_path), "LATCHKEY_CERTS_DIR": str(pki.dir),
            "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
            "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "auditor.pem"),
            "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "auditor-key.pem"),
            # Nothing listens here: a service that is down.
            "LATCHKEY_AUDIT_TARGET": f"localhost:{free_port()}",
            "LATCHKEY_PERMISSIONS_TARGET": f"localhost:{free_port()}"}


def assert_one_clear_line(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == code, out
    assert "Traceback" not in out, out
    for word in words:
        assert word in out, out


@pytest.mark.parametrize(("args", "words"), [
    (["audit", "export", "--start", "yesterday"], ["'yesterday' is not an ISO 8601 time"]),
    (["audit", "verify", "--start", "2026-13-01"], ["is not an ISO 8601 time"]),
    (["certs", "revoke", "/nonexistent/nope.pem"], ["is not a file"]),
    (["certs", "issue", "door", "lab-1"], ["not a door id"]),
    (["certs", "issue", "role", "superuser"], ["no role 'superuser'"]),
    (["health", "--only", "bogus"], ["'bogus' is not a service"]),
])
def test_a_wrong_input_is_named_with_exit_2(env, args, words):
    assert_one_clear_line(latchkey(*args, **env), cli_errors.USAGE, *words)


def test_an_unreachable_service_is_exit_5_not_a_broken_chain(env):
    assert_one_clear_line(latchkey("audit", "verify", **env), cli_errors.UNREACHABLE, "did not answer",
                          "UNAVAILABLE")
    assert_one_clear_line(latchkey("audit", "export", **env), cli_errors.UNREACHABLE, "did not answer")


def test_a_refused_request_prints_the_servers_message_with_exit_4(system, pki, env):
    env["LATCHKEY_AUDIT_TARGET"] = system.targets["audit"]
    assert_one_clear_line(latchkey("audit", "export", "--type", "bogus", **env), cli_errors.REFUSED,
                          "INVALID_ARGUMENT", "event_types[0]: unknown type")


def test_version(env):
    result = latchkey("--version", **env)
    assert result.returncode == 0 and result.stdout.startswith("latchkey ")
