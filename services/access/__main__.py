"""`python -m services.access`: start-up only.

The first process serves and runs the projector; with LATCHKEY_ACCESS_WORKERS
> 1 it starts the other workers, which share the port (SO_REUSEPORT) and only
serve; one that dies is started again. They stop when it stops, and die with
it: a worker left serving after its parent was killed would hold its decision
spool and answer from a view nobody projects any more. The kernel sends each worker SIGTERM when the parent
dies (PR_SET_PDEATHSIG); as a backstop the worker also checks its parent's pid.
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys

from latchkit import metrics_files

# Before anything imports prometheus_client: the workers' metrics add up only in its multiprocess
# mode, chosen at import. This process prepares (empties) the directory; its workers inherit it.
metrics_files.prepare("access")

from latchkit import logs, process, server  # noqa: E402
from latchkit.retry import Backoff  # noqa: E402
from services.access import bootstrap  # noqa: E402
from services.access.settings import AccessSettings  # noqa: E402

log = logging.getLogger("latchkey.access")
PARENT_ENV = "LATCHKEY_ACCESS_PARENT_PID"
PARENT_CHECK_SECONDS = 1.0


async def watch_parent(parent: int) -> None:
    """The backstop: a worker whose parent is gone (re-parented) stops as on SIGTERM."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(PARENT_CHECK_SECONDS)  # the polling period, not a synchronisation
    log.error("the access main process is gone; this worker stops", extra={"parent": parent})
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.Event().wait()  # the shutdown that SIGTERM starts cancels this job


async def serve(workers: "Workers") -> None:
    app = bootstrap.build()
    await app.start()
    spec = app.spec()
    parent = os.environ.get(PARENT_ENV)
    if app.settings.worker_index > 0 and parent:
        spec.background.append(lambda: watch_parent(int(parent)))
    if workers.procs:
        spec.background.append(workers.supervise)
    await server.serve_forever(app.settings.server, spec)


class Workers:
    """The main process's worker processes: started with it, started again if one dies, stopped with it.

    A worker that dies (killed, or crashed) would leave the port with fewer processes
    for as long as the main one lives; `supervise` (a background job of the main
    process's server) starts it again within about RESPAWN_CHECK_SECONDS, then with
    the shared backoff if it keeps dying. Workers are started from the main thread
    (the kernel's parent-death signal follows the thread that forked them).
    """

    RESPAWN_CHECK_SECONDS = 0.5

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: dict[int, subprocess.Popen] = {}

    def _spawn(self, index: int) -> None:
        env = {**os.environ, "LATCHKEY_ACCESS_WORKER_INDEX": str(index), PARENT_ENV: str(os.getpid())}
        # No preexec_fn: a respawn happens inside the running, threaded server, where Python
        # code between fork and exec can deadlock the child. The worker asks for its parent-death
        # signal itself, first thing (main below).
        self.procs[index] = subprocess.Popen([sys.executable, "-m", "services.access"], env=env)

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    async def supervise(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.RESPAWN_CHECK_SECONDS)  # the polling period: no event says a child died
            for index, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                log.error("an access worker exited; starting it again",
                          extra={"worker": index, "pid": proc.pid, "code": proc.returncode})
                await asyncio.sleep(backoff.next())
                self._spawn(index)

    def stop(self) -> None:
        process.stop_all(self.procs.values(), grace_s=30)


def main() -> None:
    parent = os.environ.get(PARENT_ENV)
    if parent and os.environ.get("LATCHKEY_ACCESS_WORKER_INDEX", "0") != "0":
        process.die_with_parent(int(parent))  # exits at once if the parent is already gone
    logs.configure("access")
    settings = AccessSettings.from_env()
    workers = Workers(settings.workers if settings.worker_index == 0 else 1)
    workers.start()
    try:
        server.run(lambda: serve(workers))
    finally:
        workers.stop()


if __name__ == "__main__":
    main()
