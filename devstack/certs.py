"""Development certificate authority and certificate issuance.

Identities are carried as URI SANs (`spiffe://latchkey/<kind>/<name>`):
door controllers `door/<door_id>`, people `role/admin` and `role/auditor`,
internal services `service/<name>`. The same files serve as server and client
certificates, so every process can both listen and call over mTLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from latchkit.identity import TRUST_DOMAIN

IDENTITY_KINDS = ("door", "role", "service")
DEV_IDENTITIES = (
    ("service", "permissions"),
    ("service", "access"),
    ("service", "audit"),
    ("role", "admin"),
    ("role", "auditor"),
)


def spiffe_id(kind: str, name: str) -> str:
    if kind not in IDENTITY_KINDS:
        raise ValueError(f"identity kind must be one of {IDENTITY_KINDS}, not {kind!r}")
    if not name or "/" in name:
        raise ValueError(f"identity name {name!r} must be non-empty and contain no '/'")
    return f"spiffe://{TRUST_DOMAIN}/{kind}/{name}"


@dataclass(frozen=True)
class IssuedCert:
    cert_file: Path
    key_file: Path
    uri: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(directory: Path, *, common_name: str = "Latchkey dev CA", days: int = 3650) -> Path:
    """Create `ca.pem` and `ca-key.pem` in `directory` unless they already exist."""
    ca_file, ca_key_file = directory / "ca.pem", directory / "ca-key.pem"
    if ca_file.exists() and ca_key_file.exists():
        return ca_file
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(ca_key_file, _key_pem(key))
    ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_file


def issue(
    ca_dir: Path,
    out_dir: Path,
    kind: str,
    name: str,
    *,
    days: float = 365,
    file_stem: str | None = None,
    not_before: dt.datetime | None = None,
) -> IssuedCert:
    """Issue a certificate for `spiffe://latchkey/<kind>/<name>`, signed by the CA in `ca_dir`.

    The certificate is valid for both server and client authentication and
    names `localhost`/127.0.0.1 so a service can present it when listening; a
    service's also names the service (its Kubernetes Service), so a job in the
    cluster can dial e.g. `permissions:7401`.
    """
    uri = spiffe_id(kind, name)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / 'ca-key.pem'} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{kind}/{name}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    *([x509.DNSName(name)] if kind == "service" else []),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    stem = file_stem or (name if kind != "door" else f"door-{name}")
    cert_file, key_file = out_dir / f"{stem}.pem", out_dir / f"{stem}-key.pem"
    _write_private(key_file, _key_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return IssuedCert(cert_file=cert_file, key_file=key_file, uri=uri)


def ensure_dev_certs(directory: Path) -> list[IssuedCert]:
    """Create the dev CA and one certificate per built-in identity; idempotent."""
    directory.mkdir(parents=True, exist_ok=True)
    create_ca(directory)
    issued = []
    for kind, name in DEV_IDENTITIES:
        cert_file = directory / f"{name}.pem"
        if cert_file.exists() and (directory / f"{name}-key.pem").exists():
            continue
        issued.append(issue(directory, directory, kind, name))
    return issued


def peer_identity(cert_pem: bytes) -> str | None:
    """The `spiffe://latchkey/...` URI SAN of a PEM certificate, or None."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(f"spiffe://{TRUST_DOMAIN}/"):
            return uri
    return None
