"""`python -m services.access`: start-up only.

The first process serves and runs the projector; with LATCHKEY_ACCESS_WORKERS
> 1 it starts the other workers, which share the port (SO_REUSEPORT) and only
serve. They stop when it stops, and die with it: a worker left serving after
its parent was killed would hold its decision spool and answer from a view
nobody projects any more. The kernel sends each worker SIGTERM when the parent
dies (PR_SET_PDEATHSIG); as a backstop the worker also checks its parent's pid.
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys

from latchkit import logs, process, server
from services.access import bootstrap
from services.access.settings import AccessSettings

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


async def serve() -> None:
    app = bootstrap.build()
    await app.start()
    spec = app.spec()
    parent = os.environ.get(PARENT_ENV)
    if app.settings.worker_index > 0 and parent:
        spec.background.append(lambda: watch_parent(int(parent)))
    await server.serve_forever(app.settings.server, spec)


def main() -> None:
    logs.configure("access")
    settings = AccessSettings.from_env()
    workers = []
    if settings.worker_index == 0:
        me = os.getpid()
        for index in range(1, settings.workers):
            env = {**os.environ, "LATCHKEY_ACCESS_WORKER_INDEX": str(index), PARENT_ENV: str(me)}
            workers.append(subprocess.Popen([sys.executable, "-m", "services.access"], env=env,
                                            preexec_fn=process.preexec_die_with_parent()))
    try:
        server.run(serve)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
