"""`make chaos` in short: one round of the faults behind known failures, every invariant asserted.

The run starts its own stack and services (it kills PostgreSQL, NATS and Redis,
so it cannot share the session's); `python -m chaos --rounds 3` is the full
version with every fault. A failure here names the invariant and its number.
"""

from __future__ import annotations

import pytest

from chaos import faults, runner


@pytest.mark.timeout(300)
def test_one_round_of_faults_keeps_every_invariant():
    # The system under load; each short fault in turn, restored; then the audit log is read.
    result = runner.run(rounds=1, names=faults.SHORT, hold_s=2.0)
    # Every fault recovered, and nothing the clients saw is missing from the record.
    assert result["failures"] == [], {k: result.get(k) for k in ("failures", "faults", "invariants")}
