"""Fixtures of the unit tests: the permissions use cases on the in-memory adapters."""

from __future__ import annotations

import pytest

from services.permissions.directory import Directory
from services.permissions.entitlements import Entitlements
from tests.unit.fakes_permissions import KEY, T0, FakeDatabase, Ids


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def use_cases(db):
    ids = Ids()
    return (Directory(db, KEY, clock=lambda: T0, ids=ids), Entitlements(db, KEY, clock=lambda: T0, ids=ids))
