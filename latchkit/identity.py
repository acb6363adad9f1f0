"""The caller's identity, taken from its verified client certificate."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import grpc

from latchkit.revocation import REVOKED

TRUST_DOMAIN = "latchkey"
"""Every latchkey identity is a SPIFFE-style URI SAN: spiffe://latchkey/<kind>/<name>."""
_PREFIX = f"spiffe://{TRUST_DOMAIN}/"


@dataclass(frozen=True, slots=True)
class Principal:
    """`spiffe://latchkey/<kind>/<name>`: kind is door, role or service."""

    uri: str
    kind: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> Principal | None:
        if not uri.startswith(_PREFIX):
            return None
        kind, _, name = uri[len(_PREFIX):].partition("/")
        if kind not in {"door", "role", "service"} or not name or "/" in name:
            return None
        return cls(uri=uri, kind=kind, name=name)


SYSTEM = Principal(uri=f"{_PREFIX}service/system", kind="service", name="system")
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


def principal_from_context(context: grpc.aio.ServicerContext) -> Principal | None:
    """The URI SAN of the peer certificate (gRPC verified its chain during the handshake).

    None when the certificate carries no latchkey identity or has been revoked.
    """
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if pem and REVOKED.is_revoked(pem[0]):
        return None
    for raw in auth.get("x509_subject_alternative_name", ()):
        principal = Principal.parse(raw.decode() if isinstance(raw, bytes) else raw)
        if principal is not None:
            return principal
    return None


def actor() -> str:
    """The URI of the principal of the current RPC, for event and audit records."""
    principal = current_principal.get()
    return principal.uri if principal is not None else SYSTEM.uri
