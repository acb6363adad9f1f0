"""`python -m services.audit`: start-up only."""

from latchkit import logs, server
from services.audit import bootstrap


async def main() -> None:
    app = bootstrap.build()
    await app.store.open()
    await server.serve_forever(app.settings.server, app.spec())


if __name__ == "__main__":
    logs.configure("audit")
    server.run(main)
