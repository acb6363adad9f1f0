"""LATCHKEY_ACCESS_WORKERS > 1: the extra worker processes share the port and stay up."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from ops.run import health_of


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def listeners(port: int) -> int:
    """Listening sockets on `port` (SO_REUSEPORT: one per process)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                count += 1
    return count


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\tZ" not in next(line for line in status.read_text().splitlines()
                                                 if line.startswith("State:"))


def test_two_workers_serve_one_port_and_stop_together(system, tmp_path):
    port = free_port()
    env = {**system.env, "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_ACCESS_PORT": str(port),
           "LATCHKEY_ACCESS_METRICS_PORT": str(free_port()), "LATCHKEY_STATE_DIR": str(tmp_path),
           "LATCHKEY_ACCESS_INSTANCE": "workers-test"}
    proc = subprocess.Popen([sys.executable, "-m", "services.access"], env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while health_of(f"localhost:{port}", timeout=0.5) != "SERVING":
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # Both processes listen (then each binds its metrics, or not, right after).
        while listeners(port) < 2:
            assert time.monotonic() < deadline, "the second worker never listened"
            time.sleep(0.05)
        workers = children(proc.pid)
        assert len(workers) == 1
        # New connections land on either process; every one is served.
        assert all(health_of(f"localhost:{port}", timeout=2) == "SERVING" for _ in range(10))
        assert children(proc.pid) == workers and all(alive(w) for w in workers)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not any(alive(w) for w in workers)
