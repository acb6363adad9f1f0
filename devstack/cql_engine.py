"""The local CQL engine: Apache Cassandra 5.0 on the JDK, for development and tests.

ScyllaDB cannot be installed on the project's machines, so the CQL adapters
are exercised against Apache Cassandra 5.0: the same CQL, the same native
protocol (pinned to v4, which ScyllaDB speaks) and the same driver. Its jars
come from Maven Central (`tools/cassandra/pom.xml`, fetched once by `make
setup` into `.state/tools/cassandra/`); the configuration files are
in `tools/cassandra/`. One engine runs per state directory, as a child process
in its own session, and is stopped by its pid file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from latchkit.process import pid_alive, stop_pid
from latchkit.settings import REPO_ROOT, EnvironmentProblem

CONFIG_DIR = REPO_ROOT / "tools" / "cassandra"
"""cassandra.yaml, logback.xml, the JVM options, and pom.xml (which pins the version)."""
JARS_DIR = REPO_ROOT / ".state" / "tools" / "cassandra"
START_TIMEOUT_SECONDS = 180.0
HEAP = "1G"


class CqlEngineError(EnvironmentProblem, RuntimeError):
    """The engine is missing or failed to start; the message says what to do."""


class CqlEngine:
    """One Cassandra node under `root` (data, logs, config), answering CQL on `address:native_port`."""

    def __init__(self, root: Path, native_port: int, storage_port: int, address: str = "127.0.0.1") -> None:
        self.root = Path(root)
        self.native_port = native_port
        self.storage_port = storage_port
        self.address = address
        self._proc: subprocess.Popen | None = None

    @property
    def pidfile(self) -> Path:
        return self.root / "cassandra.pid"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "cassandra.log"

    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is not None:
            return None  # our own child exited (and is reaped now)
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _argv(self) -> list[str]:
        if not list(JARS_DIR.glob("cassandra-all-*.jar")):
            raise CqlEngineError(f"the CQL engine's jars are missing from {JARS_DIR}: run `make setup`")
        java = os.environ.get("JAVA_HOME", "")
        java = str(Path(java, "bin", "java")) if java else "java"
        options = [line.strip() for line in (CONFIG_DIR / "jvm17-server.options").read_text().splitlines()
                   if line.strip() and not line.strip().startswith("#")]
        return [
            java, f"-Xms{HEAP}", f"-Xmx{HEAP}", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
            "-XX:TieredStopAtLevel=1",  # a test engine wants to start fast more than to peak
            *options,
            f"-Dcassandra.config=file://{self.root / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={self.root / 'data'}",
            f"-Dcassandra.logdir={self.root / 'logs'}",
            f"-Dlogback.configurationFile=file://{CONFIG_DIR / 'logback.xml'}",
            # A single node: no gossip to settle, no ring to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.initial_token=0", "-Dcassandra-foreground=yes",
            # System tables unflushed: schema changes (a keyspace per test) take milliseconds, not
            # seconds of fsync. Only for a throwaway engine: a crash can lose its schema.
            "-Dcassandra.unsafesystem=true",
            "-cp", f"{JARS_DIR}/*", "org.apache.cassandra.service.CassandraDaemon",
        ]

    def start(self) -> None:
        """Launch the node if it is not running; returns at once (`wait_ready` waits)."""
        if self.pid() is not None:
            return
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = (CONFIG_DIR / "cassandra.yaml").read_text().format(
            address=self.address, storage_port=self.storage_port, native_port=self.native_port)
        (self.root / "cassandra.yaml").write_text(config)
        with open(self.root / "logs" / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(self._argv(), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pidfile.write_text(str(self._proc.pid))

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Ready means a CQL query answers: `SELECT release_version FROM system.local`."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise CqlEngineError(f"the CQL engine exited during start-up:\n{self._tail()}")
            if not self._port_open():
                time.sleep(0.25)  # still booting: the native transport opens last
                continue
            try:
                version = self.query_release_version()
            except Exception as exc:  # not up yet: connection refused, no host available
                last = exc
                time.sleep(0.5)
                continue
            if not version.startswith("5."):
                raise CqlEngineError(f"unexpected CQL engine release {version}")
            return
        raise CqlEngineError(f"the CQL engine did not answer within {timeout:.0f}s ({last!r}):\n{self._tail()}")

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((self.address, self.native_port)) == 0

    def query_release_version(self) -> str:
        from latchkit.scylla import ScyllaSettings, connect

        cluster, session = connect(ScyllaSettings(hosts=(self.address,), port=self.native_port,
                                                  request_timeout=5.0))
        try:
            return session.execute("SELECT release_version FROM system.local").one()[0]
        finally:
            cluster.shutdown()

    def _tail(self) -> str:
        for path in (self.log, self.root / "logs" / "stdout.log"):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                return f"(from {path})\n" + "\n".join(lines[-15:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Cassandra drains and flushes), then SIGKILL after `timeout`; removes the pid file."""
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, timeout, poll=0.1)
        self.pidfile.unlink(missing_ok=True)
