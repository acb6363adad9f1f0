"""With several access workers on one port, /metrics counts every worker's calls, not the first's."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
import urllib.request

import grpc
from latchkey.access.v1 import access_pb2, access_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import free_port
from latchkit import metrics_files
from latchkit.settings import REPO_ROOT
from latchkit.tls import channel_credentials
from ops.run import health_of
from tests.e2e.helpers import rid
from tests.e2e.test_access_workers import listeners

CONNECTIONS, CALLS_EACH = 24, 5


def scrape(port: int, pki) -> dict[str, float]:
    """The Unlock counters, over https with a client certificate as Prometheus scrapes them."""
    admin = pki.tls("admin")
    context = ssl.create_default_context(cafile=str(admin.ca_file))
    context.load_cert_chain(str(admin.cert_file), str(admin.key_file))
    with urllib.request.urlopen(f"https://localhost:{port}/metrics", context=context, timeout=5) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("grpc_method") == "Unlock" and s.name in (
                    "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_count"):
                totals[s.name] = totals.get(s.name, 0) + s.value
    return totals


def test_every_workers_unlocks_are_counted(system, pki, tmp_path):
    port, metrics_port = free_port(), free_port()
    # A metric file left by an earlier run of this instance: the main process clears it.
    stale = metrics_files.default_directory("access", tmp_path) / "counter_1.db"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"not a metric file")
    env = {**system.env, "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_ACCESS_PORT": str(port),
           "LATCHKEY_ACCESS_METRICS_PORT": str(metrics_port), "LATCHKEY_STATE_DIR": str(tmp_path),
           "LATCHKEY_ACCESS_INSTANCE": f"metrics-{rid()[:8]}"}
    proc = subprocess.Popen([sys.executable, "-m", "services.access"], env=env, cwd=REPO_ROOT)
    try:
        # Both processes serve before any door connects.
        deadline = time.monotonic() + 30
        while health_of(f"localhost:{port}", timeout=0.5) != "SERVING" or listeners(port) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the two workers never listened"
            time.sleep(0.05)
        assert not stale.exists()
        # Each connection lands on either worker (SO_REUSEPORT), so with this many both serve.
        creds = channel_credentials(pki.issue("door", "door-metrics"))
        for _ in range(CONNECTIONS):
            with grpc.secure_channel(f"localhost:{port}", creds) as channel:
                stub = access_pb2_grpc.AccessServiceStub(channel)
                for _ in range(CALLS_EACH):
                    stub.Unlock(access_pb2.UnlockRequest(door_id="door-metrics", request_id=rid(),
                                                         user_id=f"nobody-{rid()[:8]}"), timeout=5)
        # Every Unlock shows in the one endpoint, whichever worker answered it.
        expected = CONNECTIONS * CALLS_EACH
        assert scrape(metrics_port, pki) == {"grpc_server_started_total": expected,
                                             "grpc_server_handled_total": expected,
                                             "grpc_server_handling_seconds_count": expected}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
