"""Idempotency records remember which request they answered.

A request_id reused with a different request must be refused, not answered
with the first request's result. `request_hash` is a keyed hash of the whole
request, so the secrets some requests carry (a credential's PIN) are not
recoverable from it. Rows written before this column existed have no hash;
a retry of one of those is replayed as before.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE idempotency ADD COLUMN request_hash bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE idempotency DROP COLUMN request_hash")
