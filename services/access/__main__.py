"""`python -m services.access`: start-up only.

The first process serves and runs the projector; with LATCHKEY_ACCESS_WORKERS
> 1 it starts the other workers, which share the port (SO_REUSEPORT) and only
serve. They stop when it stops.
"""

import os
import signal
import subprocess
import sys

from latchkit import logs, server
from services.access import bootstrap
from services.access.settings import AccessSettings


async def serve() -> None:
    app = bootstrap.build()
    await app.start()
    await server.serve_forever(app.settings.server, app.spec())


def main() -> None:
    logs.configure("access")
    settings = AccessSettings.from_env()
    workers = []
    if settings.worker_index == 0:
        for index in range(1, settings.workers):
            env = {**os.environ, "LATCHKEY_ACCESS_WORKER_INDEX": str(index)}
            workers.append(subprocess.Popen([sys.executable, "-m", "services.access"], env=env))
    try:
        server.run(serve)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
