"""Access settings that bound each other are refused at start, with the variable named."""

from __future__ import annotations

import pytest

from latchkit.settings import SettingsError
from services.access.settings import AccessSettings


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("LATCHKEY_STATE_DIR", str(tmp_path))
    for name in ("LATCHKEY_SCYLLA_HOSTS", "LATCHKEY_VIEW_BACKEND", "LATCHKEY_ACCESS_DECISION_LINGER_SECONDS",
                 "LATCHKEY_ACCESS_REDIS_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_decision_linger_defaults_to_20_ms_and_accepts_up_to_half_the_spool_age(env):
    assert AccessSettings.from_env().decision_linger_seconds == 0.02
    env.setenv("LATCHKEY_ACCESS_DECISION_LINGER_SECONDS", "0.05")
    assert AccessSettings.from_env().decision_linger_seconds == 0.05


@pytest.mark.parametrize("value", ["0.1", "-0.01"])
def test_a_linger_the_spool_would_overtake_is_refused(env, value):
    # Events older than 0.1 s go to the spool: a linger that long would spool every event.
    env.setenv("LATCHKEY_ACCESS_DECISION_LINGER_SECONDS", value)
    with pytest.raises(SettingsError, match="LATCHKEY_ACCESS_DECISION_LINGER_SECONDS"):
        AccessSettings.from_env()
