"""Access service settings, read once from the environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from latchkit import endpoints
from latchkit.bus import BusSettings
from latchkit.scylla import ScyllaSettings
from latchkit.settings import ServerSettings, SettingsError, env_float, env_int, env_str, state_dir


@dataclass(frozen=True)
class AccessSettings:
    server: ServerSettings
    bus: BusSettings
    scylla: ScyllaSettings
    redis_url: str
    """LATCHKEY_REDIS_URL."""
    workers: int
    """LATCHKEY_ACCESS_WORKERS: processes sharing the port (default: the number of cores)."""
    worker_index: int
    """Set by the service itself for its extra worker processes."""
    instance: str
    """LATCHKEY_ACCESS_INSTANCE (default: the host name): names this instance's projector consumer.
    Every instance projects the whole stream into its view (idempotent by version)."""
    view_backend: str
    """LATCHKEY_VIEW_BACKEND: embedded (default without Scylla hosts) or scylla."""
    data_dir: Path
    """Embedded view and decision spools: $LATCHKEY_STATE_DIR/access."""
    cache_ttl_seconds: int
    """LATCHKEY_ACCESS_CACHE_TTL_SECONDS: last bound on a Redis entry's staleness."""
    redis_lease_seconds: float
    """LATCHKEY_ACCESS_REDIS_LEASE_SECONDS: workers trust Redis while the projector renews this lease; a
    Redis write that fails holds the view back until it has lapsed (at most this long, once per outage)."""
    negative_ttl_seconds: int
    """LATCHKEY_ACCESS_NEGATIVE_TTL_SECONDS: how long "no such grant/credential" is cached."""
    local_cache_entries: int
    """LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES: per-process cache in front of Redis (0 turns it off)."""
    min_revision_wait_seconds: float
    """LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS (default 1): the longest Unlock waits for the view to reach
    min_revision (never past the caller's deadline less 0.1 s); then the answer is DENIED, STALE_VIEW."""
    max_deadline_seconds: float
    """LATCHKEY_ACCESS_MAX_DEADLINE_SECONDS: Unlock calls must carry a deadline no longer than this."""
    throttle_window_seconds: float
    """LATCHKEY_ACCESS_THROTTLE_WINDOW_SECONDS."""
    throttle_credential_denials: int
    """LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS: denials of one credential in the window before RATE_LIMITED."""
    throttle_door_denials: int
    """LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS: denials at one door in the window before RATE_LIMITED."""
    projector_stall_seconds: float = 10.0
    """LATCHKEY_ACCESS_PROJECTOR_STALL_SECONDS: the stream has work for the projector and its consumer has
    not moved for this long: the projector is stalled (health NOT_SERVING, its stack logged, restarted)."""
    decision_linger_seconds: float = 0.02
    """LATCHKEY_ACCESS_DECISION_LINGER_SECONDS: how long a decision event waits for others to share its
    JetStream message. Longer: fewer messages (less broker CPU) but more decisions in memory, which a
    crash of the process loses. At most 0.05 s, half the spool's 0.1 s (older events are spooled).
    Only in the `async` durability mode: in `acked` mode callers wait, and batches form while the
    previous one waits for its PubAck."""
    decision_durability: str = "acked"
    """LATCHKEY_ACCESS_DECISION_DURABILITY: acked (default: Unlock answers only once its decision is
    acknowledged by JetStream or fsynced in the spool) or async (answers at once; a crash can lose
    the last linger of decisions, or the last 0.1 s while NATS does not acknowledge)."""

    @classmethod
    def from_env(cls) -> AccessSettings:
        e = endpoints.ACCESS
        scylla = ScyllaSettings.from_env()
        backend = env_str("LATCHKEY_VIEW_BACKEND", "scylla" if scylla.hosts else "embedded")
        if backend not in ("embedded", "scylla"):
            raise SettingsError(f"LATCHKEY_VIEW_BACKEND={backend!r}: use embedded or scylla")
        if backend == "scylla" and not scylla.hosts:
            raise SettingsError("LATCHKEY_VIEW_BACKEND=scylla needs LATCHKEY_SCYLLA_HOSTS")
        redis_lease = env_float("LATCHKEY_ACCESS_REDIS_LEASE_SECONDS", 1.0)
        if not 0.05 <= redis_lease <= 60:
            raise SettingsError(f"LATCHKEY_ACCESS_REDIS_LEASE_SECONDS={redis_lease:g}: use 0.05..60")
        linger = env_float("LATCHKEY_ACCESS_DECISION_LINGER_SECONDS", 0.02)
        if not 0 <= linger <= 0.05:
            raise SettingsError(f"LATCHKEY_ACCESS_DECISION_LINGER_SECONDS={linger:g}: use 0..0.05")
        stall = env_float("LATCHKEY_ACCESS_PROJECTOR_STALL_SECONDS", 10.0)
        if not 1 <= stall <= 600:
            raise SettingsError(f"LATCHKEY_ACCESS_PROJECTOR_STALL_SECONDS={stall:g}: use 1..600")
        return cls(
            decision_durability=decision_durability(),
            server=ServerSettings.from_env(e.env_prefix, default_port=e.default_port,
                                           default_metrics_port=e.default_metrics_port, identity="access"),
            bus=BusSettings.from_env(),
            scylla=scylla,
            redis_url=env_str("LATCHKEY_REDIS_URL", "redis://127.0.0.1:26379/0"),
            workers=env_int("LATCHKEY_ACCESS_WORKERS", os.cpu_count() or 1, minimum=1),
            worker_index=env_int("LATCHKEY_ACCESS_WORKER_INDEX", 0, minimum=0),
            instance=env_str("LATCHKEY_ACCESS_INSTANCE", socket.gethostname()),
            view_backend=backend,
            data_dir=state_dir() / "access",
            cache_ttl_seconds=env_int("LATCHKEY_ACCESS_CACHE_TTL_SECONDS", 300, minimum=1),
            redis_lease_seconds=redis_lease,
            negative_ttl_seconds=env_int("LATCHKEY_ACCESS_NEGATIVE_TTL_SECONDS", 30, minimum=1),
            local_cache_entries=env_int("LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES", 200_000, minimum=0),
            min_revision_wait_seconds=env_float("LATCHKEY_ACCESS_MIN_REVISION_WAIT_SECONDS", 1.0),
            projector_stall_seconds=stall,
            max_deadline_seconds=env_float("LATCHKEY_ACCESS_MAX_DEADLINE_SECONDS", 30.0),
            throttle_window_seconds=env_float("LATCHKEY_ACCESS_THROTTLE_WINDOW_SECONDS", 60.0),
            throttle_credential_denials=env_int("LATCHKEY_ACCESS_THROTTLE_CREDENTIAL_DENIALS", 10, minimum=1),
            throttle_door_denials=env_int("LATCHKEY_ACCESS_THROTTLE_DOOR_DENIALS", 100, minimum=1),
            decision_linger_seconds=linger,
        )


def decision_durability() -> str:
    """LATCHKEY_ACCESS_DECISION_DURABILITY, checked (the bench's bound server reads it too)."""
    durability = env_str("LATCHKEY_ACCESS_DECISION_DURABILITY", "acked")
    if durability not in ("acked", "async"):
        raise SettingsError(f"LATCHKEY_ACCESS_DECISION_DURABILITY={durability!r}: use acked or async")
    return durability
