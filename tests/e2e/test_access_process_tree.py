"""Killing the access main process takes its workers with it: none is left serving alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from tests.e2e.test_access_workers import alive, children, listeners


def access_env(stack, pki, tmp_path, port: int) -> dict:
    urls = stack.urls()
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_SCYLLA_")},
            "LATCHKEY_STATE_DIR": str(tmp_path), "LATCHKEY_CERTS_DIR": str(pki.dir),
            "LATCHKEY_REDIS_URL": urls.redis_url, "LATCHKEY_NATS_URL": urls.nats_url,
            "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_ACCESS_PORT": str(port), "LATCHKEY_ACCESS_METRICS_PORT": "0",
            "LATCHKEY_ACCESS_INSTANCE": f"process-tree-{port}", "LATCHKEY_LOG_LEVEL": "WARNING"}


def wait_for(predicate, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling the kernel's process and socket tables: bounded by the deadline


def test_a_killed_worker_is_started_again(stack, pki, tmp_path):
    port = free_port()
    main = subprocess.Popen([sys.executable, "-m", "services.access"], env=access_env(stack, pki, tmp_path, port),
                            cwd=REPO_ROOT)
    try:
        # 1. Both processes serve the port.
        wait_for(lambda: main.poll() is None and listeners(port) >= 2, "the two processes never listened")
        [worker] = children(main.pid)
        # 2. The worker is killed; the main process starts another, which serves the port too.
        os.kill(worker, 9)
        wait_for(lambda: (new := children(main.pid)) and new != [worker] and listeners(port) >= 2,
                 "the killed worker was not started again")
        assert main.poll() is None
        # 3. A graceful stop still stops everything promptly, the new worker included.
        [respawned] = children(main.pid)
        main.terminate()
        main.wait(timeout=15)
        wait_for(lambda: not alive(respawned) and not listeners(port), "the respawned worker outlived a stop", 15)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(timeout=10)


def test_a_worker_dies_with_its_killed_main_process(stack, pki, tmp_path):
    urls = stack.urls()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_SCYLLA_")},
           "LATCHKEY_STATE_DIR": str(tmp_path), "LATCHKEY_CERTS_DIR": str(pki.dir),
           "LATCHKEY_REDIS_URL": urls.redis_url, "LATCHKEY_NATS_URL": urls.nats_url,
           "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_ACCESS_PORT": str(port), "LATCHKEY_ACCESS_METRICS_PORT": "0",
           "LATCHKEY_ACCESS_INSTANCE": "process-tree-test", "LATCHKEY_LOG_LEVEL": "WARNING"}
    main = subprocess.Popen([sys.executable, "-m", "services.access"], env=env, cwd=REPO_ROOT)
    workers: list[int] = []
    try:
        # Both processes serve the port.
        deadline = time.monotonic() + 30
        while listeners(port) < 2:
            assert main.poll() is None, "the access main process exited"
            assert time.monotonic() < deadline, "the two processes never listened"
            time.sleep(0.05)  # polling the kernel's socket table: bounded by the deadline above
        workers = children(main.pid)
        assert len(workers) == 1
        # The main process is killed (SIGKILL: no clean-up of its own runs).
        main.kill()
        main.wait(timeout=10)
        # Its worker follows within a bounded time, and the port is free again.
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) or listeners(port):
            assert time.monotonic() < deadline, "a worker outlived its killed main process"
            time.sleep(0.05)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(timeout=10)
        for w in workers:
            if alive(w):
                os.kill(w, 9)
