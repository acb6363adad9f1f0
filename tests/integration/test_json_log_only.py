"""A service's stderr stays one JSON object per line: gRPC's own log lines are kept out of it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import certs
from latchkit.settings import REPO_ROOT

SERVER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from latchkit import logs, server
    from latchkit.settings import ServerSettings, TlsSettings

    async def main():
        home = Path(sys.argv[1])
        tls = TlsSettings(home / "ca.pem", home / "permissions.pem", home / "permissions-key.pem")
        settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5,
                                  max_message_bytes=65536, tls=tls)
        running = await server.start(settings, server.ServiceSpec(name="probe", register=lambda s: ()))
        print(running.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await running.stop(0.5)

    logs.configure("probe")
    asyncio.run(main())
""")


def test_a_refused_handshake_leaves_no_plain_text_in_the_log(tmp_path):
    certs.ensure_dev_certs(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen'}"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)], cwd=REPO_ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        # A client without a certificate: the TLS handshake fails, which gRPC's core reports at INFO.
        creds = grpc.ssl_channel_credentials((tmp_path / "ca.pem").read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        _, stderr = proc.communicate(input="", timeout=30)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        assert isinstance(json.loads(line), dict), line
