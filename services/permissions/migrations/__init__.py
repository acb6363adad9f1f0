"""Alembic migrations for the permissions schema; `latchkey migrate` runs `upgrade`."""

from __future__ import annotations

from pathlib import Path


def sqlalchemy_url(dsn: str) -> str:
    """Accept a plain libpq URL and select the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    raise ValueError("LATCHKEY_POSTGRES_DSN must start with postgresql://")


def upgrade(env: dict[str, str]) -> None:
    from alembic import command
    from alembic.config import Config

    from services.permissions.settings import DEFAULT_DSN

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["url"] = sqlalchemy_url(env.get("LATCHKEY_POSTGRES_DSN", DEFAULT_DSN))
    command.upgrade(config, "head")
