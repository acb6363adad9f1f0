"""`python -m services.permissions`: start-up only.

With LATCHKEY_OUTBOX_RELAY=process (the default) this process serves and its
child, `python -m services.permissions.relay`, relays the outbox: started with
it, started again if it dies, stopped with it, and dying with it
(services/permissions/relay.py). With `task` the relay runs in this process's
loop, as it did before the split.
"""

from latchkit import metrics_files

# Before anything imports prometheus_client: the relay child's metrics (outbox backlog, publish
# lag, leadership) show on this process's endpoint only in its multiprocess mode, chosen at
# import. This process prepares (empties) the directory; the child inherits it.
metrics_files.prepare("permissions")

import logging  # noqa: E402

from latchkit import logs, server  # noqa: E402
from services.permissions import bootstrap  # noqa: E402
from services.permissions.relay import RelayProcess  # noqa: E402
from services.permissions.settings import PermissionsSettings  # noqa: E402

log = logging.getLogger("latchkey.permissions")
RELAY_START_SECONDS = 30.0
"""How long the main process waits, before it serves, for its relay child to start relaying."""
RELAY_STOP_EXTRA_SECONDS = 5.0
"""The relay child gets the server's grace period to finish its round; this much more before SIGKILL."""


async def serve(settings: PermissionsSettings, relay: RelayProcess | None) -> None:
    app = bootstrap.build(settings)
    spec = app.spec()
    if relay is not None:
        # Serving only once the relay runs, as with the relay in this loop: a write is not
        # left in the outbox while the child is still importing.
        if not await relay.started(RELAY_START_SECONDS):
            log.warning("the outbox relay process did not start in time; serving without it",
                        extra={"seconds": RELAY_START_SECONDS})
        spec.background.append(relay.supervise)
        spec.dependencies.append(relay.health_check())
    await server.serve_forever(settings.server, spec)


def main() -> None:
    logs.configure("permissions")
    settings = PermissionsSettings.from_env()
    relay = RelayProcess() if settings.relay_mode == "process" else None
    if relay is not None:
        relay.start()  # from the main thread, which the child's parent-death signal follows
    try:
        server.run(lambda: serve(settings, relay))
    finally:
        # After the server has stopped: writes committed during its grace period still get published.
        if relay is not None:
            relay.stop(grace_s=settings.server.grace_seconds + RELAY_STOP_EXTRA_SECONDS)


if __name__ == "__main__":
    main()
