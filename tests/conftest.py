"""Shared fixtures: a private stack on free ports (with its CQL engine), and a private PKI.

The stack lives under .state/test-<id>/ so several pytest runs can share a
machine; it is stopped when the session ends, even after failures.

The CQL engine (Apache Cassandra 5.0, see devstack/cql_engine.py) takes
10-20 s to boot, so it is launched as soon as collection shows that a test
needs it, and runs while the other tests do; `cql_settings` waits for it.
A CQL engine that cannot start fails those tests: the CQL leg is never skipped.
"""

from __future__ import annotations

import atexit
import shutil
import uuid
from pathlib import Path

import pytest

from devstack import certs
from devstack.stack import Stack, StackPorts
from latchkit.settings import REPO_ROOT, TlsSettings
from tests.system import system  # noqa: F401  (the one system fixture every suite shares)

_STACK: Stack | None = None
CQL_FIXTURES = {"cql_settings"}
CQL_PARAMS = {"cql", "scylla"}  # the parameter that puts a contract or system test on the CQL engine


def test_stack() -> Stack:
    """This session's stack (created on first use; nothing starts until asked)."""
    global _STACK
    if _STACK is None:
        _STACK = Stack(REPO_ROOT / ".state" / f"test-{uuid.uuid4().hex[:8]}", StackPorts.free())
        atexit.register(_stop_stack)  # backstop if the session is interrupted
    return _STACK


test_stack.__test__ = False  # a helper, not a test


def _stop_stack() -> None:
    if _STACK is not None:
        _STACK.down()
        shutil.rmtree(_STACK.state_dir, ignore_errors=True)


def pytest_collection_finish(session) -> None:
    def on_cql(item) -> bool:
        params = getattr(getattr(item, "callspec", None), "params", {})
        return bool(CQL_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
            isinstance(v, str) and v in CQL_PARAMS for v in params.values())

    cql_tests = [item for item in session.items if on_cql(item)]
    if cql_tests:
        test_stack().cql_engine.start()  # boots in the background while other tests run
    session.config.stash[CQL_TESTS] = {item.nodeid for item in cql_tests}


CQL_TESTS = pytest.StashKey[set]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    cql_tests = config.stash.get(CQL_TESTS, set())
    if cql_tests:
        passed = sum(1 for r in terminalreporter.stats.get("passed", []) if r.nodeid in cql_tests)
        terminalreporter.write_line(f"CQL leg: {len(cql_tests)} tests ran against Apache Cassandra 5.0 "
                                    f"({passed} passed)")


def pytest_sessionfinish(session, exitstatus) -> None:
    _stop_stack()


@pytest.fixture(scope="session")
def stack():
    s = test_stack()
    s.up()
    return s


@pytest.fixture(scope="session")
def cql_settings():
    """ScyllaSettings for this session's CQL engine (keyspace `latchkey`; tests pick their own)."""
    from latchkit.scylla import ScyllaSettings

    engine = test_stack().cql_engine
    engine.start()
    engine.wait_ready()
    return ScyllaSettings(hosts=(engine.address,), port=engine.native_port)


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
