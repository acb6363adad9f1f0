"""The permissions schema: integrity lives here, not only in Python.

Revision: `revision_counter` holds one row. Every write transaction starts by
incrementing it (UPDATE ... RETURNING), which takes the row lock until
commit: writers are serialized, so revisions are contiguous and in commit
order, and every read inside a write sees all earlier writes.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE revision_counter (
    id smallint PRIMARY KEY CONSTRAINT ck_revision_counter_single CHECK (id = 1),
    revision bigint NOT NULL
);
INSERT INTO revision_counter VALUES (1, 0);

CREATE TABLE users (
    user_id uuid PRIMARY KEY,
    display_name text NOT NULL CONSTRAINT ck_users_display_name CHECK (length(display_name) BETWEEN 1 AND 200),
    email text NOT NULL DEFAULT '' CONSTRAINT ck_users_email CHECK (length(email) <= 320),
    external_id text CONSTRAINT ck_users_external_id CHECK (length(external_id) BETWEEN 1 AND 200),
    suspended boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    CONSTRAINT uq_users_external_id UNIQUE (external_id)
);

CREATE TABLE doors (
    door_id uuid PRIMARY KEY,
    name text NOT NULL CONSTRAINT ck_doors_name CHECK (length(name) BETWEEN 1 AND 200),
    site text NOT NULL DEFAULT '' CONSTRAINT ck_doors_site CHECK (length(site) <= 200),
    time_zone text NOT NULL CONSTRAINT ck_doors_time_zone CHECK (length(time_zone) BETWEEN 1 AND 64),
    lockdown boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
CREATE INDEX ix_doors_site ON doors (site, door_id);

CREATE TABLE groups (
    group_id uuid PRIMARY KEY,
    name text NOT NULL CONSTRAINT ck_groups_name CHECK (length(name) BETWEEN 1 AND 200),
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    CONSTRAINT uq_groups_name UNIQUE (name)
);

CREATE TABLE group_members (
    group_id uuid NOT NULL REFERENCES groups ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX ix_group_members_user ON group_members (user_id);

CREATE TABLE schedules (
    schedule_id uuid PRIMARY KEY,
    name text NOT NULL CONSTRAINT ck_schedules_name CHECK (length(name) BETWEEN 1 AND 200),
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);

CREATE TABLE schedule_windows (
    schedule_id uuid NOT NULL REFERENCES schedules ON DELETE CASCADE,
    day smallint NOT NULL CONSTRAINT ck_schedule_windows_day CHECK (day BETWEEN 1 AND 7),
    start_minute smallint NOT NULL CONSTRAINT ck_schedule_windows_start CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute smallint NOT NULL CONSTRAINT ck_schedule_windows_end CHECK (end_minute <= 1440),
    CONSTRAINT ck_schedule_windows_order CHECK (end_minute > start_minute),
    PRIMARY KEY (schedule_id, day, start_minute)
);

CREATE TABLE credentials (
    credential_id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    kind smallint NOT NULL CONSTRAINT ck_credentials_kind CHECK (kind BETWEEN 1 AND 3),
    secret_hash bytea NOT NULL CONSTRAINT ck_credentials_hash CHECK (length(secret_hash) = 32),
    label text NOT NULL DEFAULT '' CONSTRAINT ck_credentials_label CHECK (length(label) <= 200),
    revoked boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL,
    revoke_time timestamptz,
    CONSTRAINT ck_credentials_revoke_time CHECK (revoked = (revoke_time IS NOT NULL))
);
CREATE INDEX ix_credentials_user ON credentials (user_id, credential_id);
-- One active credential per presented secret: lookups by hash are unambiguous.
CREATE UNIQUE INDEX uq_credentials_active_secret ON credentials (kind, secret_hash) WHERE NOT revoked;

CREATE TABLE grants (
    grant_id uuid PRIMARY KEY,
    user_id uuid REFERENCES users ON DELETE CASCADE,
    group_id uuid REFERENCES groups ON DELETE CASCADE,
    door_id uuid NOT NULL REFERENCES doors ON DELETE CASCADE,
    valid_from timestamptz,
    valid_until timestamptz,
    schedule_id uuid REFERENCES schedules ON DELETE RESTRICT,
    revoked boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL,
    revoke_time timestamptz,
    CONSTRAINT ck_grants_one_subject CHECK ((user_id IS NULL) <> (group_id IS NULL)),
    CONSTRAINT ck_grants_window CHECK (valid_until > valid_from),
    CONSTRAINT ck_grants_revoke_time CHECK (revoked = (revoke_time IS NOT NULL))
);
CREATE INDEX ix_grants_user ON grants (user_id, grant_id) WHERE user_id IS NOT NULL;
CREATE INDEX ix_grants_group ON grants (group_id, grant_id) WHERE group_id IS NOT NULL;
CREATE INDEX ix_grants_door ON grants (door_id, grant_id);
CREATE INDEX ix_grants_schedule ON grants (schedule_id) WHERE schedule_id IS NOT NULL;

-- A create retried with the same request_id by the same caller returns the first answer.
CREATE TABLE idempotency (
    caller text NOT NULL,
    request_id text NOT NULL,
    method text NOT NULL,
    response bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, request_id)
);

-- Written in the same transaction as the change; the relay publishes in
-- (revision, idx) order and deletes a row only after JetStream acked it.
CREATE TABLE outbox (
    revision bigint NOT NULL,
    idx integer NOT NULL,
    event_id uuid NOT NULL,
    subject text NOT NULL,
    payload bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (revision, idx),
    CONSTRAINT uq_outbox_event_id UNIQUE (event_id)
);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    for table in ("outbox", "idempotency", "grants", "credentials", "schedule_windows", "schedules",
                  "group_members", "groups", "doors", "users", "revision_counter"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
