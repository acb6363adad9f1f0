"""The operator tools against the running system: audit export and verify, view rebuild."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.settings import REPO_ROOT
from tests.e2e.helpers import Admin, Door, audit_events, card, rid


def latchkey(system, pki, *args, identity="auditor", **env):
    full = {**system.env, "LATCHKEY_AUDIT_TARGET": system.targets["audit"],
            "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
            "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / f"{identity}.pem"),
            "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / f"{identity}-key.pem"), **env}
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args], env=full,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_export_writes_the_filtered_range_as_csv_and_jsonl(system, pki, tmp_path):
    admin = Admin(system, pki)
    user, door = admin.user(), admin.door()
    secret = rid()[:16]
    admin.IssueCredential(pm.IssueCredentialRequest(user_id=user.user_id, kind=1, secret=secret))
    g = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    ids = [ctl.unlock(credential=card(secret), min_revision=g.revision).decision_id for _ in range(3)]
    ctl.close()
    admin.close()
    audit_events(system, pki, count=3, door_id=door.door_id, event_types=["access.unlock_decided"])
    out = tmp_path / "door.csv"
    result = latchkey(system, pki, "audit", "export", "--door", door.door_id, "--type", "access.unlock_decided",
                      "--format", "csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["outcome"] for r in rows] == ["GRANTED"] * 3
    assert secret not in out.read_text()
    jsonl = tmp_path / "door.jsonl"
    result = latchkey(system, pki, "audit", "export", "--door", door.door_id, "--out", str(jsonl))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    decided = [e["envelope"]["unlock_decided"]["decision_id"] for e in events if e["type"] == "access.unlock_decided"]
    assert decided == ids


def test_verify_reports_an_intact_chain(system, pki):
    result = latchkey(system, pki, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stderr


READ_VIEW = """
import asyncio, json, sys
from services.access import bootstrap
from services.access.settings import AccessSettings

async def main():
    view = bootstrap.build_view(AccessSettings.from_env())
    await view.open()
    try:
        pairs = {f"{p.door_id}/{p.user_id}": [p.version, len(p.payload)] for p in await view.all_pairs()}
        print(json.dumps({"pairs": pairs, "watermark": await view.watermark()}))
    finally:
        await view.close()

asyncio.run(main())
"""


def read_view(system, **env) -> dict:
    """The unlock view as the access service's own adapter reads it (embedded or CQL)."""
    result = subprocess.run([sys.executable, "-c", READ_VIEW], env={**system.env, **env}, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rebuild_view_repopulates_an_empty_view_from_postgresql(system, pki, tmp_path):
    admin = Admin(system, pki)
    user, door, gone = admin.user(), admin.door(), admin.user()
    g = admin.grant(user.user_id, door.door_id)
    revoked = admin.grant(gone.user_id, door.door_id)
    admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=revoked.grant.grant_id))
    admin.close()
    # A new region: an empty view (a new state directory, or a new keyspace), same PostgreSQL and Redis.
    region = {"LATCHKEY_STATE_DIR": str(tmp_path)}
    if system.backend == "cql":
        region["LATCHKEY_SCYLLA_KEYSPACE"] = f"lk_region_{rid()[:8]}"
        result = latchkey(system, pki, "access", "migrate-cql", "--rf", "1", **region)
        assert result.returncode == 0, result.stderr + result.stdout
    result = latchkey(system, pki, "access", "rebuild-view", **region)
    assert result.returncode == 0, result.stderr + result.stdout
    view = read_view(system, **region)
    version, payload_length = view["pairs"][f"{door.door_id}/{user.user_id}"]
    assert version >= g.revision and payload_length > 0
    assert not [k for k in view["pairs"] if k.endswith("/" + gone.user_id)]
    assert view["watermark"] >= g.revision


def test_rebuild_view_while_unlock_serves(system, pki):
    admin = Admin(system, pki)
    user, door = admin.user(), admin.door()
    g = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    assert ctl.unlock(user_id=user.user_id, min_revision=g.revision).decision == 1
    result = latchkey(system, pki, "access", "rebuild-view")
    assert result.returncode == 0, result.stderr + result.stdout
    assert ctl.unlock(user_id=user.user_id).decision == 1
    r = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=g.grant.grant_id))
    assert ctl.unlock(user_id=user.user_id, min_revision=r.revision).decision == 2
    ctl.close()
    admin.close()
