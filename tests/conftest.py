"""Shared fixtures: a private stack on free ports, and a private PKI.

The stack lives under .state/test-<id>/ so several pytest runs can share a
machine; it is stopped when the session ends, even after failures.
"""

from __future__ import annotations

import atexit
import shutil
import uuid
from pathlib import Path

import pytest

from latchkit import certs
from latchkit.settings import REPO_ROOT, TlsSettings
from latchkit.stack import Stack, StackPorts


@pytest.fixture(scope="session")
def stack():
    state = REPO_ROOT / ".state" / f"test-{uuid.uuid4().hex[:8]}"
    s = Stack(state, StackPorts.free())
    atexit.register(s.down)  # backstop if the session is interrupted
    try:
        s.up()
        yield s
    finally:
        s.down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def urls(stack):
    return stack.urls()


class Pki:
    """A dev CA with the built-in identities; `tls(name)` gives one identity's files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        certs.ensure_dev_certs(directory)

    def tls(self, name: str) -> TlsSettings:
        return TlsSettings(self.dir / "ca.pem", self.dir / f"{name}.pem", self.dir / f"{name}-key.pem")

    def issue(self, kind: str, name: str, **kwargs) -> TlsSettings:
        issued = certs.issue(self.dir, self.dir, kind, name, **kwargs)
        return TlsSettings(self.dir / "ca.pem", issued.cert_file, issued.key_file)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))
