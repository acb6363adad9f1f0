"""Permissions service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from latchkit import endpoints
from latchkit.bus import BusSettings
from latchkit.settings import ServerSettings, SettingsError, env_float, env_int, env_str

MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_DSN = "postgresql://latchkey@127.0.0.1:25432/latchkey"
RELAY_MODES = ("process", "task")


@dataclass(frozen=True)
class PermissionsSettings:
    server: ServerSettings
    bus: BusSettings
    postgres_dsn: str
    """LATCHKEY_POSTGRES_DSN (libpq URL)."""
    pool_size: int
    """LATCHKEY_PERMISSIONS_DB_POOL_SIZE: connections kept open."""
    relay_poll_seconds: float
    """LATCHKEY_OUTBOX_POLL_SECONDS: the relay polls this often even without a NOTIFY."""
    relay_batch: int
    """LATCHKEY_OUTBOX_BATCH: rows published per round."""
    write_group_max: int = 32
    """LATCHKEY_WRITE_GROUP_MAX: writes committed together at most (group commit; 1 turns it off).
    At most 32: one savepoint each, inside PostgreSQL's cache of 64 subtransactions per backend."""
    write_queue_budget_ms: int = 1000
    """LATCHKEY_WRITE_QUEUE_BUDGET_MS: a write that would wait longer than this for the database is
    refused at once with RESOURCE_EXHAUSTED and a retry delay."""
    relay_mode: str = "task"
    """LATCHKEY_OUTBOX_RELAY: `process` (the environment's default): `python -m services.permissions`
    runs the relay in a child process of its own, off the request loop; `task`: in the server's
    own loop, as a background job. Settings built in code (tests and tools that build the app
    in-process, with no child to start) default to `task`."""

    @classmethod
    def from_env(cls) -> PermissionsSettings:
        e = endpoints.PERMISSIONS
        return cls(
            server=ServerSettings.from_env(e.env_prefix, default_port=e.default_port,
                                           default_metrics_port=e.default_metrics_port,
                                           identity="permissions",
                                           # A full batch (1,000 users or grants) fits; a single request
                                           # is far smaller.
                                           default_max_message_bytes=MAX_MESSAGE_BYTES),
            bus=BusSettings.from_env(),
            postgres_dsn=env_str("LATCHKEY_POSTGRES_DSN", DEFAULT_DSN),
            pool_size=env_int("LATCHKEY_PERMISSIONS_DB_POOL_SIZE", 20, minimum=1),
            relay_poll_seconds=env_float("LATCHKEY_OUTBOX_POLL_SECONDS", 0.5),
            relay_batch=env_int("LATCHKEY_OUTBOX_BATCH", 256, minimum=1),
            write_group_max=env_int("LATCHKEY_WRITE_GROUP_MAX", 32, minimum=1, maximum=32),
            write_queue_budget_ms=env_int("LATCHKEY_WRITE_QUEUE_BUDGET_MS", 1000, minimum=1),
            relay_mode=relay_mode(),
        )


def relay_mode() -> str:
    mode = env_str("LATCHKEY_OUTBOX_RELAY", "process").strip().lower()
    if mode not in RELAY_MODES:
        raise SettingsError(f"LATCHKEY_OUTBOX_RELAY={mode!r} is not one of {', '.join(RELAY_MODES)}")
    return mode
