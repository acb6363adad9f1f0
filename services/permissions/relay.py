"""`python -m services.permissions.relay`: the outbox relay in a process of its own.

With LATCHKEY_OUTBOX_RELAY=process (the default) the permissions main process
starts this one as its child (`RelayProcess`), so publishing the outbox takes no
CPU from the request loop (one GIL) just when writes are committing.

- It dies with its parent: first thing, it asks the kernel for SIGTERM when the
  parent dies (PR_SET_PDEATHSIG; no preexec_fn, see `RelayProcess.start`), and
  it also checks its parent's pid every second. A relay left running after its
  parent was killed would keep publishing, and hold the relay lead, with nobody
  to supervise or stop it.
- SIGTERM stops it gracefully: the round in flight is published and deleted,
  then it exits (`OutboxRelay.stop`).
- It is started again if it dies alone. Nothing is lost either way: a row leaves
  the outbox only after JetStream acknowledged it, and a row published again
  carries the same `Nats-Msg-Id` (its event id), which JetStream drops as a
  duplicate within the stream's window.
- Its metrics go to the parent's prometheus multiprocess directory, inherited
  with the environment (latchkit/metrics_files.py): the permissions metrics
  endpoint shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from latchkit import bus, logs, metrics_files, process, server, tracing
from latchkit.health import DependencyCheck
from latchkit.retry import Backoff
from services.permissions.adapters.outbox_relay import OutboxRelay
from services.permissions.settings import PermissionsSettings

log = logging.getLogger("latchkey.permissions.relay")
PARENT_ENV = "LATCHKEY_PERMISSIONS_PARENT_PID"
STARTED_FD_ENV = "LATCHKEY_PERMISSIONS_RELAY_STARTED_FD"
"""The write end of a pipe on which the child says it has started relaying (`RelayProcess.started`)."""
PARENT_CHECK_SECONDS = 1.0


class RelayProcess:
    """The permissions main process's relay child: started with it, again if it dies, stopped with it.

    Started, and started again, from the main thread (`start` before the server's loop,
    `supervise` as a job of that loop, which runs on the main thread): the kernel's
    parent-death signal follows the thread that forked the child, not the process.
    """

    RESPAWN_CHECK_SECONDS = 0.5
    STABLE_SECONDS = 5.0
    """A relay started again counts as running only once it has stayed up this long: one that
    keeps dying shows as down in health, not as up between two deaths."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self._started_fd: int | None = None

    def start(self) -> None:
        read_end, write_end = os.pipe()
        env = {**os.environ, PARENT_ENV: str(os.getpid()), STARTED_FD_ENV: str(write_end)}
        # No preexec_fn: a restart happens inside the running, threaded server, where Python
        # code between fork and exec can deadlock the child. The child asks for its
        # parent-death signal itself, first thing (main below). (pass_fds runs no Python.)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.permissions.relay"], env=env,
                                         pass_fds=(write_end,))
        finally:
            os.close(write_end)
        self.started_at = time.monotonic()
        self._close_started()
        self._started_fd = read_end

    async def started(self, timeout_s: float) -> bool:
        """Whether the child started relaying within `timeout_s` (False too if it exited first).

        The main process waits for this before it serves: a fresh interpreter takes a second
        or more to import, and a write committed before the relay runs would wait that long
        to be published, where the relay in the server's own loop started with the server.
        """
        fd = self._started_fd
        if fd is None:
            return False
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(readable, timeout_s)
            return os.read(fd, 1) == b"1"  # b"": the child exited without a word
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            self._close_started()

    def _close_started(self) -> None:
        if self._started_fd is not None:
            os.close(self._started_fd)
            self._started_fd = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stable(self) -> bool:
        return self.running() and (self.restarts == 0 or time.monotonic() - self.started_at >= self.STABLE_SECONDS)

    async def supervise(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.RESPAWN_CHECK_SECONDS)  # the polling period: no event says a child died
            if self.proc is None or self.proc.poll() is None:
                if self.stable():
                    backoff.reset()
                continue
            self.restarts += 1
            log.error("the outbox relay process exited; starting it again",
                      extra={"pid": self.proc.pid, "code": self.proc.returncode, "restarts": self.restarts})
            forget_metrics(self.proc.pid)
            await asyncio.sleep(backoff.next())
            self.start()

    def health_check(self) -> DependencyCheck:
        """`latchkey.dependency.outbox_relay`, not required: while the relay is down or keeps dying,
        writes still commit (into the outbox) but are not published; the service is degraded."""

        async def probe() -> None:
            if not self.running():
                raise RuntimeError("the outbox relay process is not running")
            if not self.stable():
                raise RuntimeError(f"the outbox relay process was started again {self.restarts} times; "
                                   f"the last one is up for less than {self.STABLE_SECONDS:.0f} s")

        return DependencyCheck("outbox_relay", probe, required=False)

    def stop(self, grace_s: float) -> None:
        self._close_started()
        if self.proc is not None:
            process.stop_all([self.proc], grace_s=grace_s)
            forget_metrics(self.proc.pid)


def forget_metrics(pid: int) -> None:
    """Drop a dead relay's gauges (its counters and histograms stay counted)."""
    if metrics_files.enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


async def parent_gone(parent: int) -> None:
    """Returns once this process's parent is gone (it was re-parented): the backstop to PDEATHSIG."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(PARENT_CHECK_SECONDS)  # the polling period, not a synchronisation
    log.error("the permissions main process is gone; the relay stops", extra={"parent": parent})


def say_started() -> None:
    """Tell the parent (`RelayProcess.started`) this process relays; it may have stopped listening."""
    fd = os.environ.pop(STARTED_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"1")
            os.close(int(fd))


async def relay_until_stopped(settings: PermissionsSettings, parent: int | None) -> None:
    """Relay until SIGTERM (or the parent is gone), then finish the round in flight and return."""
    tracing.configure("permissions")
    relay = OutboxRelay(settings.postgres_dsn, settings.bus, batch=settings.relay_batch,
                        poll_seconds=settings.relay_poll_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if parent is None:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    relaying = asyncio.create_task(relay.run(), name="outbox-relay")
    say_started()
    ends: list[asyncio.Task] = [asyncio.create_task(stop.wait(), name="relay-sigterm")]
    if parent is not None:
        ends.append(asyncio.create_task(parent_gone(parent), name="relay-parent"))
    try:
        await asyncio.wait([relaying, *ends], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for end in ends:
            end.cancel()
        bus.shutting_down()
        if not relaying.done():
            await relay.stop(relaying, settings.server.grace_seconds)
        tracing.shutdown()
    if not relaying.cancelled():
        relaying.result()  # the relay ended by itself: a bug; exit non-zero and be started again


def main() -> None:
    parent = os.environ.get(PARENT_ENV)
    if parent:
        process.die_with_parent(int(parent))  # exits at once if the parent is already gone
        # A Ctrl-C in a terminal reaches the whole process group; the parent stops this
        # process (SIGTERM) once it has stopped serving, so the relay publishes until then.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure("permissions")
    settings = PermissionsSettings.from_env()
    server.run(lambda: relay_until_stopped(settings, int(parent) if parent else None))


if __name__ == "__main__":
    main()
