"""What tracing costs Unlock: `python -m bench access --tracing`.

A second access process like the measured one, with tracing on: it exports
every Unlock's server span by OTLP/gRPC to a sink in a process of its own
(`tests/otlp_collector.py`, counting only). Its Unlock rows (`*_traced`) run
in rotation with the same rows of the untraced process and the echo floor, so
the on/off ratio holds through a slow spell of the machine. The server's CPU
per call includes the exporter's thread; the sink's is shown apart
(`otlp_sink_cpu_us`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from latchkey.access.v1 import access_pb2, access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev

from bench.harness import aio_channel, interleaved
from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from tests.waiting import until

IN_FLIGHT = (1, 8, 32)
SECONDS = 3.0


def start_sink() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.otlp_collector", str(port)], cwd=REPO_ROOT)
    return proc, f"http://127.0.0.1:{port}"


async def measure_traced(access, start_access, env: dict, state_dir: Path, pki_dir: Path, hot_door, hot_card,
                         revision: int, echo_port: int, shared: dict) -> dict:
    """Unlock's memory hit and unknown-credential deny with tracing off and on, side by side.

    `access` is (pid, target) of the untraced process; `start_access` starts another like it.
    """
    from bench.access_bench import door_tls, fresh

    sink, endpoint = start_sink()
    traced = None
    try:
        traced, traced_target = start_access(env, state_dir / "traced", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        off_pid, off_target = access
        hot_tls = door_tls(pki_dir, hot_door.door_id)
        async with aio_channel(off_target, hot_tls) as och, aio_channel(traced_target, hot_tls) as tch, \
                aio_channel(f"localhost:{echo_port}", hot_tls) as ech:
            off, on = access_pb2_grpc.AccessServiceStub(och), access_pb2_grpc.AccessServiceStub(tch)
            echo = ech.unary_unary("/latchkey.bench.Echo/Echo")
            hit = access_pb2.UnlockRequest(door_id=hot_door.door_id, credential=hot_card, min_revision=revision)

            async def granted() -> bool:  # the new process has projected the grants
                return (await on.Unlock(fresh(hit), timeout=5)).decision == ev.DECISION_GRANTED

            await until(granted, "the traced access process to answer from the seeded grants")
            hit.ClearField("min_revision")
            payload = fresh(hit).SerializeToString()
            deny = access_pb2.UnlockRequest(door_id=hot_door.door_id,
                                            credential=access_pb2.PresentedCredential(kind=1, secret="unknown"))

            async def call_echo(i):
                await echo(payload, timeout=5)

            def unlock(stub, request):
                async def call(i):
                    await stub.Unlock(fresh(request), timeout=5)
                return call

            calls = {"echo_floor": call_echo,
                     "unlock_memory_hit": unlock(off, hit), "unlock_memory_hit_traced": unlock(on, hit),
                     "unlock_deny_unknown_credential": unlock(off, deny),
                     "unlock_deny_unknown_credential_traced": unlock(on, deny)}
            servers = {name: (traced.pid if name.endswith("_traced") else off_pid) for name in calls}
            servers["echo_floor"] = None
            rows = {}
            for n in IN_FLIGHT:
                measured = await interleaved(calls, n, SECONDS, servers={k: v for k, v in servers.items() if v},
                                             shared={**shared, "otlp_sink": sink.pid})
                rows.update({f"tracing_{name}@{n}": row for name, row in measured.items()})
        for n in IN_FLIGHT:
            for case in ("unlock_memory_hit", "unlock_deny_unknown_credential"):
                on_row, off_row = rows[f"tracing_{case}_traced@{n}"], rows[f"tracing_{case}@{n}"]
                on_row["p50_x_off"] = on_row["p50_ms"] / off_row["p50_ms"]
                on_row["rps_x_off"] = on_row["rps"] / off_row["rps"]
                if on_row.get("server_cpu_us") and off_row.get("server_cpu_us"):
                    on_row["cpu_x_off"] = on_row["server_cpu_us"] / off_row["server_cpu_us"]
        return rows
    finally:
        if traced is not None:
            traced.terminate()
            traced.wait(timeout=15)
        sink.terminate()
        sink.wait(timeout=15)
