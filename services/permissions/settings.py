"""Permissions service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from latchkit import endpoints
from latchkit.bus import BusSettings
from latchkit.settings import ServerSettings, SettingsError, env_float, env_int, env_str

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
                                           identity="permissions"),
            bus=BusSettings.from_env(),
            postgres_dsn=env_str("LATCHKEY_POSTGRES_DSN", DEFAULT_DSN),
            pool_size=env_int("LATCHKEY_PERMISSIONS_DB_POOL_SIZE", 20, minimum=1),
            relay_poll_seconds=env_float("LATCHKEY_OUTBOX_POLL_SECONDS", 0.5),
            relay_batch=env_int("LATCHKEY_OUTBOX_BATCH", 256, minimum=1),
            relay_mode=relay_mode(),
        )


def relay_mode() -> str:
    mode = env_str("LATCHKEY_OUTBOX_RELAY", "process").strip().lower()
    if mode not in RELAY_MODES:
        raise SettingsError(f"LATCHKEY_OUTBOX_RELAY={mode!r} is not one of {', '.join(RELAY_MODES)}")
    return mode
