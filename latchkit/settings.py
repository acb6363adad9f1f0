"""Helpers for frozen settings read from the environment.

Every service reads its settings once, at start-up, into a frozen dataclass.
Each variable has a documented default so `make run` works with nothing set;
`latchkey settings` prints them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".state" / "dev"


class EnvironmentProblem(Exception):
    """Something about this machine or its configuration, not the request, stops the command;
    the message says what (the CLI prints it as one line, exit code 3)."""


class SettingsError(EnvironmentProblem, ValueError):
    """A setting is present but cannot be used; the message names the variable."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={value} is above the maximum {maximum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")


def env_list(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def state_dir() -> Path:
    """LATCHKEY_STATE_DIR: where the dev stack, certificates and embedded stores live."""
    return Path(env_str("LATCHKEY_STATE_DIR", str(DEFAULT_STATE_DIR))).resolve()


@dataclass(frozen=True)
class TlsSettings:
    """Paths of this process's certificate, key and the CA bundle it trusts."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def for_identity(cls, name: str, *, prefix: str = "LATCHKEY") -> TlsSettings:
        """Read `<PREFIX>_TLS_{CA,CERT,KEY}`; default to the dev CA's files for `name`."""
        certs = Path(env_str("LATCHKEY_CERTS_DIR", str(state_dir() / "certs")))
        return cls(
            ca_file=Path(env_str(f"{prefix}_TLS_CA", str(certs / "ca.pem"))),
            cert_file=Path(env_str(f"{prefix}_TLS_CERT", str(certs / f"{name}.pem"))),
            key_file=Path(env_str(f"{prefix}_TLS_KEY", str(certs / f"{name}-key.pem"))),
        )


@dataclass(frozen=True)
class ServerSettings:
    """Settings every gRPC server shares; `prefix` is e.g. LATCHKEY_ACCESS."""

    host: str
    port: int
    metrics_port: int
    grace_seconds: float
    max_message_bytes: int
    tls: TlsSettings
    max_concurrent_rpcs: int = 2000

    @classmethod
    def from_env(
        cls, prefix: str, *, default_port: int, default_metrics_port: int, identity: str,
        default_max_message_bytes: int = 64 * 1024,
    ) -> ServerSettings:
        return cls(
            host=env_str(f"{prefix}_HOST", "127.0.0.1"),
            port=env_int(f"{prefix}_PORT", default_port, minimum=0),
            metrics_port=env_int(f"{prefix}_METRICS_PORT", default_metrics_port, minimum=0),
            grace_seconds=env_float(f"{prefix}_GRACE_SECONDS", 5.0),
            max_message_bytes=env_int(f"{prefix}_MAX_MESSAGE_BYTES", default_max_message_bytes, minimum=1024),
            tls=TlsSettings.for_identity(identity, prefix=prefix),
            max_concurrent_rpcs=env_int(f"{prefix}_MAX_CONCURRENT_RPCS", 2000, minimum=1),
        )
