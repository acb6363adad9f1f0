"""`python -m services.permissions`: start-up only."""

from latchkit import logs, server
from services.permissions import bootstrap


async def main() -> None:
    app = bootstrap.build()
    await server.serve_forever(app.settings.server, app.spec())


if __name__ == "__main__":
    logs.configure("permissions")
    server.run(main)
