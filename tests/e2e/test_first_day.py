"""The README's first-day flow (scripts/first-day.sh), exactly as a newcomer runs it, against the system.

Runs on both legs of the `system` fixture, so it is also the proof that the
flow works with the view and the audit log in the CQL engine (`make run CQL=1`).
"""

from __future__ import annotations

import json
import re
import subprocess

from latchkit.settings import REPO_ROOT


def test_the_first_day_flow_runs_as_written(system, pki):
    env = {**system.env,
           "LATCHKEY_PERMISSIONS_TARGET": system.targets["permissions"],
           "LATCHKEY_ACCESS_TARGET": system.targets["access"], "LATCHKEY_AUDIT_TARGET": system.targets["audit"],
           "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"), "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "auditor.pem"),
           "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "auditor-key.pem")}
    result = subprocess.run(["scripts/first-day.sh"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"decision"')]
    # By user, by card, then after the revoke.
    assert [a["decision"] for a in answers] == ["DECISION_GRANTED", "DECISION_GRANTED", "DECISION_DENIED"], out
    audited = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"type"')]
    assert [e["outcome"] for e in audited if e["type"] == "access.unlock_decided"] == \
        ["GRANTED", "GRANTED", "DENIED"], out
    assert re.search(r"chain intact: \d+ events checked", out), out
