"""`latchkey audit export`: CSV and JSON Lines carry the same chain fields, in one encoding (base64)."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys

import grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.settings import REPO_ROOT
from latchkit.tls import channel_credentials
from tests.e2e.helpers import Admin, audit_events

CHAIN_FIELDS = ("hash", "prev_hash")


def export(system, pki, out, *args) -> None:
    env = {**system.env, "LATCHKEY_AUDIT_TARGET": system.targets["audit"],
           "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
           "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "auditor.pem"),
           "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "auditor-key.pem")}
    result = subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", "audit", "export",
                             "--out", str(out), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def test_csv_and_jsonl_carry_hash_and_prev_hash_in_base64(system, pki, tmp_path):
    # A door with a few changes: each is an event in the audit log's hash chain.
    admin = Admin(system, pki)
    door = admin.door()
    for lockdown in (True, False):
        admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=door.door_id, lockdown=lockdown))
    admin.close()
    audit_events(system, pki, count=3, door_id=door.door_id)

    # What AuditLog says about them, as bytes.
    with grpc.secure_channel(system.targets["audit"], channel_credentials(pki.tls("auditor"))) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        expected = [(i.event.event_id, b64(i.event.hash), b64(i.event.prev_hash))
                    for i in stub.AuditLog(audit_pb2.AuditLogRequest(door_id=door.door_id), timeout=30)]
    assert len(expected) == 3
    assert all(len(base64.b64decode(h)) == 32 and len(base64.b64decode(p)) == 32 for _, h, p in expected)

    # Exported both ways.
    export(system, pki, tmp_path / "door.csv", "--door", door.door_id, "--format", "csv")
    export(system, pki, tmp_path / "door.jsonl", "--door", door.door_id, "--format", "jsonl")
    rows = list(csv.DictReader((tmp_path / "door.csv").open()))
    lines = [json.loads(line) for line in (tmp_path / "door.jsonl").read_text().splitlines()]

    # Every chain field in both, with the same text, equal to AuditLog's bytes in base64.
    assert [(r["event_id"], r["hash"], r["prev_hash"]) for r in rows] == expected
    assert [(e["event_id"], e["hash"], e["prev_hash"]) for e in lines] == expected
