"""LATCHKEY_ACCESS_DECISION_DURABILITY: acked by default, async only when asked, nothing else."""

from __future__ import annotations

import pytest

from latchkit.settings import SettingsError
from services.access import bootstrap
from services.access.settings import AccessSettings


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("LATCHKEY_STATE_DIR", str(tmp_path))
    for name in ("LATCHKEY_SCYLLA_HOSTS", "LATCHKEY_VIEW_BACKEND", "LATCHKEY_ACCESS_DECISION_DURABILITY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_answers_wait_for_durable_decisions_unless_asked_otherwise(env):
    assert AccessSettings.from_env().decision_durability == "acked"
    env.setenv("LATCHKEY_ACCESS_DECISION_DURABILITY", "async")
    assert AccessSettings.from_env().decision_durability == "async"


def test_an_unknown_durability_is_refused_with_the_variable_named(env):
    env.setenv("LATCHKEY_ACCESS_DECISION_DURABILITY", "fsync")
    with pytest.raises(SettingsError, match="LATCHKEY_ACCESS_DECISION_DURABILITY"):
        AccessSettings.from_env()


@pytest.mark.parametrize("mode", ["acked", "async"])
def test_the_publisher_gets_the_chosen_durability(env, mode):
    env.setenv("LATCHKEY_ACCESS_DECISION_DURABILITY", mode)
    env.setenv("LATCHKEY_ACCESS_LOCAL_CACHE_ENTRIES", "0")
    assert bootstrap.build(AccessSettings.from_env()).decisions.durability == mode
