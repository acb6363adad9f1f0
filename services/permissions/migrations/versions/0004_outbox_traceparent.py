"""Outbox rows may keep the trace of the write that made them: `traceparent`, NULL when off.

The relay publishes such a row under a producer span in that trace, so one
trace runs from the write (its server span) through JetStream to the
consumers. Nullable and without a default: adding it rewrites no row, rows
already waiting are relayed as before, and with tracing off it stays NULL.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox DROP COLUMN traceparent")
