"""Alembic environment: online migrations only, on a plain (sync) psycopg engine."""

from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.attributes["url"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        # Two `latchkey migrate` at once (two pods starting) must not race.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7401)")
        context.run_migrations()
engine.dispose()
