"""Audit service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latchkit import endpoints
from latchkit.bus import BusSettings
from latchkit.scylla import ScyllaSettings
from latchkit.settings import ServerSettings, SettingsError, env_int, env_str, state_dir

DEFAULT_RETENTION_DAYS = 7 * 366
"""Seven years: the audit store's TTL unless LATCHKEY_AUDIT_RETENTION_DAYS says otherwise."""


@dataclass(frozen=True)
class AuditSettings:
    server: ServerSettings
    bus: BusSettings
    scylla: ScyllaSettings
    store_backend: str
    """LATCHKEY_AUDIT_STORE: embedded (default without Scylla hosts) or scylla."""
    data_dir: Path
    """Embedded store: $LATCHKEY_STATE_DIR/audit."""
    retention_days: int
    """LATCHKEY_AUDIT_RETENTION_DAYS: Scylla TTL on audit rows (default 7 years)."""
    ingest_batch: int
    """LATCHKEY_AUDIT_INGEST_BATCH: events fetched and written per round."""

    @classmethod
    def from_env(cls) -> AuditSettings:
        e = endpoints.AUDIT
        scylla = ScyllaSettings.from_env()
        backend = env_str("LATCHKEY_AUDIT_STORE", "scylla" if scylla.hosts else "embedded")
        if backend not in ("embedded", "scylla"):
            raise SettingsError(f"LATCHKEY_AUDIT_STORE={backend!r}: use embedded or scylla")
        if backend == "scylla" and not scylla.hosts:
            raise SettingsError("LATCHKEY_AUDIT_STORE=scylla needs LATCHKEY_SCYLLA_HOSTS")
        return cls(
            server=ServerSettings.from_env(e.env_prefix, default_port=e.default_port,
                                           default_metrics_port=e.default_metrics_port, identity="audit"),
            bus=BusSettings.from_env(),
            scylla=scylla,
            store_backend=backend,
            data_dir=state_dir() / "audit",
            retention_days=env_int("LATCHKEY_AUDIT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, minimum=1),
            ingest_batch=env_int("LATCHKEY_AUDIT_INGEST_BATCH", 512, minimum=1),
        )
