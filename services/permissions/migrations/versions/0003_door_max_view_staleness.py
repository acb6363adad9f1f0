"""Doors may be fail-closed: `max_view_staleness_ms`, 0 when off.

Unlock at such a door answers DENIED (STALE_VIEW) while the access process
cannot show that its view is at most this old. Existing doors get 0 (off) and
behave as before.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE doors ADD COLUMN max_view_staleness_ms integer NOT NULL DEFAULT 0 "
               "CONSTRAINT ck_doors_max_view_staleness_ms "
               "CHECK (max_view_staleness_ms = 0 OR max_view_staleness_ms BETWEEN 1000 AND 3600000)")


def downgrade() -> None:
    op.execute("ALTER TABLE doors DROP COLUMN max_view_staleness_ms")
