"""The whole system as a user runs it: `python -m services.<name>` processes on the test stack."""

from __future__ import annotations

import pytest


@pytest.fixture
def admin(system, pki):
    """An admin client of the system's permissions service (tests/e2e/helpers.Admin)."""
    from tests.e2e.helpers import Admin

    a = Admin(system, pki)
    yield a
    a.close()
