"""Revoked client certificates: a list of serial numbers, re-read when it changes.

gRPC's Python TLS settings take no CRL, so the check happens per call on the
verified peer certificate: its serial is looked up in the revocation file
(`LATCHKEY_REVOKED_SERIALS_FILE`, default `<certs dir>/revoked.txt`, one hex
serial per line). Parsed certificates are memoised by their PEM bytes.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from cryptography import x509

from latchkit.settings import state_dir


def revocation_file() -> Path:
    # Checked on every call: resolving the path (state_dir() resolves symlinks) cost more
    # than the rest of the check, so it is memoised on the settings it depends on.
    env = os.environ
    return _revocation_file(env.get("LATCHKEY_REVOKED_SERIALS_FILE"), env.get("LATCHKEY_CERTS_DIR"),
                            env.get("LATCHKEY_STATE_DIR"))


@functools.lru_cache(maxsize=16)
def _revocation_file(explicit: str | None, certs_dir: str | None, state: str | None) -> Path:
    """The settings' raw values in, the path out (`state` is part of the key: state_dir() reads it)."""
    if explicit is not None:
        return Path(explicit)
    certs = Path(certs_dir) if certs_dir is not None else state_dir() / "certs"
    return certs / "revoked.txt"


@functools.lru_cache(maxsize=4096)
def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


class RevocationList:
    """The set of revoked serials; `is_revoked` costs a stat and a set lookup."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._serials: frozenset[int] = frozenset()

    @property
    def path(self) -> Path:
        return self._path or revocation_file()

    def _refresh(self) -> None:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        if stamp == self._stamp:
            return
        with self._lock:
            serials = set()
            if stamp:
                for line in self.path.read_text().splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        serials.add(int(line, 16))
            self._serials, self._stamp = frozenset(serials), stamp

    def is_revoked(self, cert_pem: bytes) -> bool:
        self._refresh()
        return bool(self._serials) and serial_of(cert_pem) in self._serials

    def revoke(self, cert_pem: bytes, note: str = "") -> int:
        serial = serial_of(cert_pem)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(f"{serial:x}{'  # ' + note if note else ''}\n")
        return serial


REVOKED = RevocationList()
