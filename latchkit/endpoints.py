"""Where each service listens by default, and how to reach it as a client."""

from __future__ import annotations

from dataclasses import dataclass

from latchkit.settings import env_int, env_str


@dataclass(frozen=True)
class Endpoint:
    service: str
    env_prefix: str
    default_port: int
    default_metrics_port: int

    @property
    def port(self) -> int:
        return env_int(f"{self.env_prefix}_PORT", self.default_port)

    @property
    def target(self) -> str:
        """`<PREFIX>_TARGET` overrides the address clients dial."""
        return env_str(f"{self.env_prefix}_TARGET", f"localhost:{self.port}")


PERMISSIONS = Endpoint("permissions", "LATCHKEY_PERMISSIONS", 7401, 9401)
ACCESS = Endpoint("access", "LATCHKEY_ACCESS", 7402, 9402)
AUDIT = Endpoint("audit", "LATCHKEY_AUDIT", 7403, 9403)
ALL = (PERMISSIONS, ACCESS, AUDIT)
