"""Bench plumbing: services as subprocesses on the bench stack, and a closed-loop load generator."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from devstack.stack import free_port
from latchkit import endpoints, process
from latchkit.settings import REPO_ROOT, TlsSettings
from ops.run import health_of


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary_ms(latencies_s: list[float], elapsed_s: float) -> dict:
    return {"p50_ms": percentile(latencies_s, 0.5) * 1e3, "p99_ms": percentile(latencies_s, 0.99) * 1e3,
            "mean_ms": statistics.fmean(latencies_s) * 1e3 if latencies_s else float("nan"),
            "rps": len(latencies_s) / elapsed_s if elapsed_s else 0.0, "calls": len(latencies_s)}


async def closed_loop(call, in_flight: int, seconds: float, warmup: float = 0.5) -> dict:
    """`in_flight` workers each awaiting `call(i)` back to back; latencies after the warm-up."""
    return summary_ms((await _latencies(call, in_flight, seconds, warmup))[0], seconds)


async def interleaved(calls: dict, in_flight: int, seconds: float, rounds: int = 3, warmup: float = 0.3,
                      servers: dict[str, int] | None = None, shared: dict[str, int] | None = None) -> dict:
    """Each of `calls` (name -> call) for `seconds` in all, in `rounds` turns taken in rotation.

    On this shared machine a slow spell of a few seconds falls on whichever case
    runs then; in rotation it falls on every case alike, so ratios between them
    hold. Each summary pools that case's calls over its turns. With `servers`
    (name -> pid of the server process that case calls), it also gives the
    server's CPU time per call (`server_cpu_us`, user + system, warm-up calls
    included): the server process is the bottleneck here, and its CPU per call
    is steadier than wall-clock figures. Every case also gets the load generator's CPU
    per call (`client_cpu_us`: this process, which runs only the load then) and, for each
    of `shared` (name -> pid, e.g. the broker), that process's CPU per call
    (`<name>_cpu_us`): the machine's cores are shared, so what a case costs the client
    and the broker is CPU its server did not get.
    """
    pooled: dict[str, list[float]] = {name: [] for name in calls}
    watched = {"client": None, **(shared or {})}
    cpu = {name: dict.fromkeys(("server", *watched), 0.0) for name in calls}
    served = dict.fromkeys(calls, 0)
    for _ in range(rounds):
        for name, call in calls.items():
            pids = {"server": (servers or {}).get(name), **watched}
            before = {who: _cpu_seconds(pid) for who, pid in pids.items() if who == "client" or pid}
            latencies, total = await _latencies(call, in_flight, seconds / rounds, warmup)
            for who, was in before.items():
                cpu[name][who] += _cpu_seconds(pids[who]) - was
            served[name] += total
            pooled[name] += latencies
    rows = {name: summary_ms(latencies, seconds) for name, latencies in pooled.items()}
    for name in calls:
        if served[name]:
            for who, seconds_used in cpu[name].items():
                if who != "server" or (servers or {}).get(name):
                    rows[name][f"{who}_cpu_us"] = seconds_used / served[name] * 1e6
    return rows


def _cpu_seconds(pid: int | None) -> float:
    """A process's CPU time so far; None: this process."""
    return time.process_time() if pid is None else process_cpu_seconds(pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process now (Linux /proc)."""
    table = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone since the listing
                continue
            table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def cpu_by_role(roles: dict[str, tuple[int, bool]]) -> dict[str, float]:
    """CPU seconds so far of each role: name -> (pid, with its descendants?). A process that
    ended since the last reading is missing from the next: read often enough to compare."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found = {}
    for name, (pid, tree) in roles.items():
        todo, total = [pid], 0.0
        while todo:
            current = todo.pop()
            total += table.get(current, (0, 0.0))[1]
            if tree:
                todo.extend(children.get(current, ()))
        found[name] = total
    return found


async def _latencies(call, in_flight: int, seconds: float, warmup: float) -> tuple[list[float], int]:
    """(latencies after the warm-up, calls made in all)."""
    latencies: list[float] = []
    total = 0
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup

    async def worker(w: int) -> None:
        nonlocal total
        i = w
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await call(i)
            t1 = time.perf_counter()
            total += 1
            if t0 >= measure_from:
                latencies.append(t1 - t0)
            i += in_flight

    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return latencies, total


def aio_channel(target: str, tls: TlsSettings) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(tls.ca_file.read_bytes(), tls.key_file.read_bytes(),
                                         tls.cert_file.read_bytes())
    return grpc.aio.secure_channel(target, creds)


def tls(pki_dir: Path, name: str) -> TlsSettings:
    return TlsSettings(pki_dir / "ca.pem", pki_dir / f"{name}.pem", pki_dir / f"{name}-key.pem")


@dataclass
class Services:
    procs: dict[str, subprocess.Popen]
    targets: dict[str, str]
    env: dict[str, str]

    def stop(self) -> None:
        process.stop_all(self.procs.values(), grace_s=15)


def start_services(stack_urls, pki_dir: Path, state_dir: Path, names=("permissions", "access", "audit"),
                   extra_env: dict | None = None) -> Services:
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LATCHKEY_STATE_DIR": str(state_dir), "LATCHKEY_CERTS_DIR": str(pki_dir),
           "LATCHKEY_POSTGRES_DSN": stack_urls.postgres_dsn, "LATCHKEY_REDIS_URL": stack_urls.redis_url,
           "LATCHKEY_NATS_URL": stack_urls.nats_url, "LATCHKEY_LOG_LEVEL": "WARNING",
           "LATCHKEY_CLIENT_TLS_CA": str(pki_dir / "ca.pem"), "LATCHKEY_CLIENT_TLS_CERT": str(pki_dir / "admin.pem"),
           "LATCHKEY_CLIENT_TLS_KEY": str(pki_dir / "admin-key.pem"), **(extra_env or {})}
    for e in endpoints.ALL:
        env[f"{e.env_prefix}_PORT"] = str(free_port())
        env[f"{e.env_prefix}_METRICS_PORT"] = "0"
    subprocess.run([sys.executable, "-m", "ops.cli_migrate"], env=env, cwd=REPO_ROOT, check=True)
    targets = {e.service: f"localhost:{env[f'{e.env_prefix}_PORT']}" for e in endpoints.ALL if e.service in names}
    procs = {n: subprocess.Popen([sys.executable, "-m", f"services.{n}"], env=env, cwd=REPO_ROOT) for n in targets}
    wait_healthy(targets, procs, env)
    return Services(procs, targets, env)


def start_module(module: str, env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", module], env={**env, "BENCH_PORT": str(port)}, cwd=REPO_ROOT)
    wait_healthy({module: f"localhost:{port}"}, {module: proc}, env)
    return proc


def wait_healthy(targets: dict, procs: dict, env: dict) -> None:
    saved = {k: os.environ.get(k) for k in ("LATCHKEY_CLIENT_TLS_CA", "LATCHKEY_CLIENT_TLS_CERT",
                                            "LATCHKEY_CLIENT_TLS_KEY")}
    os.environ.update({k: env[k] for k in saved})
    try:
        deadline = time.monotonic() + 60
        for name, target in targets.items():
            while health_of(target, timeout=0.5) != "SERVING":
                if procs[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
