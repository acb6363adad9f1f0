"""`latchkey permissions import` against the running system: each user and grant once, however often
the import is interrupted and run again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from latchkey.permissions.v1 import permissions_pb2 as pm

from latchkit.settings import REPO_ROOT
from services.permissions.bulk_import import ChunkDone, import_file
from tests.e2e.helpers import rid


class Interrupted(Exception):
    """Raised by a test's hook to stop an import between two chunks, as a crash would."""


class Recording:
    """The real stub, noting each call's method and request_id on the way."""

    def __init__(self, stub) -> None:
        self.stub, self.calls = stub, []

    def __getattr__(self, name):
        method = getattr(self.stub, name)

        def call(request, **kwargs):
            self.calls.append((name, request.request_id))
            return method(request, **kwargs)
        return call


def latchkey(system, pki, *args):
    env = {**system.env, "LATCHKEY_PERMISSIONS_TARGET": system.targets["permissions"],
           "LATCHKEY_CLIENT_TLS_CA": str(pki.dir / "ca.pem"),
           "LATCHKEY_CLIENT_TLS_CERT": str(pki.dir / "admin.pem"),
           "LATCHKEY_CLIENT_TLS_KEY": str(pki.dir / "admin-key.pem")}
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", "permissions", "import",
                           *map(str, args)], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def people(prefix: str, count: int, doors: list[str]) -> list[dict]:
    """`count` users; every third has no door, the others one or two."""
    return [{"external_id": f"{prefix}-{i:03d}", "display_name": f"User {i}", "email": f"u{i}@example.com",
             "door_ids": doors[:i % 3]} for i in range(count)]


def write_csv(path, rows: list[dict]) -> None:
    lines = ["external_id,display_name,email,door_ids"]
    lines += [f"{r['external_id']},{r['display_name']},{r['email']},{';'.join(r['door_ids'])}" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def imported(admin, prefix: str) -> dict[str, list]:
    """Every user whose external_id starts with `prefix` (a list each, to see duplicates)."""
    found: dict[str, list] = {}
    token = ""
    while True:
        page = admin.ListUsers(pm.ListUsersRequest(page_size=500, page_token=token))
        for user in page.users:
            if user.external_id.startswith(prefix):
                found.setdefault(user.external_id, []).append(user)
        token = page.next_page_token
        if not token:
            return found


def doors_of(admin, user_id: str) -> list[str]:
    return sorted(g.door_id for g in admin.ListGrants(pm.ListGrantsRequest(user_id=user_id, page_size=500)).grants)


def assert_imported_once(admin, prefix: str, rows: list[dict]) -> None:
    found = imported(admin, prefix)
    assert sorted(found) == sorted(r["external_id"] for r in rows)
    for row in rows:
        [user] = found[row["external_id"]]
        assert (user.display_name, user.email) == (row["display_name"], row["email"])
        assert doors_of(admin, user.user_id) == sorted(row["door_ids"])


def test_a_csv_import_creates_each_user_and_grant_once_even_when_run_again(system, admin, tmp_path):
    # 25 users in chunks of 10, two thirds of them with one or two doors.
    doors = sorted(admin.door().door_id for _ in range(2))
    prefix = f"csv-{rid()[:8]}"
    rows = people(prefix, 25, doors)
    write_csv(tmp_path / "users.csv", rows)

    summary = import_file(tmp_path / "users.csv", admin.stub, chunk_size=10)
    assert (summary.records, summary.chunks, summary.users_created) == (25, 3, 25)
    assert summary.grants_created == sum(len(r["door_ids"]) for r in rows) and summary.revision > 0
    assert_imported_once(admin, prefix, rows)

    # From the first chunk again: the server replays its stored answers, nothing is created twice.
    again = import_file(tmp_path / "users.csv", admin.stub, chunk_size=10, restart=True)
    assert again.users_created == 25 and again.revision == summary.revision
    assert_imported_once(admin, prefix, rows)


def test_an_interrupted_import_resumes_after_the_last_chunk_done(system, admin, tmp_path):
    doors = sorted(admin.door().door_id for _ in range(2))
    prefix = f"resume-{rid()[:8]}"
    rows = people(prefix, 25, doors)
    write_csv(tmp_path / "users.csv", rows)

    # Stopped right after chunk 2 is committed and recorded.
    def stop_after_two(event: ChunkDone) -> None:
        if event.index == 1:
            raise Interrupted
    with pytest.raises(Interrupted):
        import_file(tmp_path / "users.csv", admin.stub, chunk_size=10, on_chunk_done=stop_after_two)
    state = json.loads((tmp_path / "users.csv.import-state.json").read_text())
    assert sorted(state["chunks"]) == ["0", "1"]
    assert len(imported(admin, prefix)) == 20

    # Resumed: only chunk 3 goes to the server, once for its users and once for their grants.
    recording = Recording(admin.stub)
    summary = import_file(tmp_path / "users.csv", recording, chunk_size=10)
    assert [name for name, _ in recording.calls] == ["BatchCreateUsers", "BatchGrantAccess"]
    assert (summary.chunks_skipped, summary.users_created) == (2, 5)
    assert_imported_once(admin, prefix, rows)
    state = json.loads((tmp_path / "users.csv.import-state.json").read_text())
    user_ids = [u for c in state["chunks"].values() for u in c["user_ids"]]
    assert sorted(user_ids) == sorted(u.user_id for [u] in imported(admin, prefix).values())


def test_a_jsonl_file_imports_from_the_command_line_with_a_json_summary(system, pki, admin, tmp_path):
    door = admin.door().door_id
    prefix = f"jsonl-{rid()[:8]}"
    rows = [{"external_id": f"{prefix}-{i}", "display_name": f"Person {i}", "email": "", "door_ids": [door]}
            for i in range(5)]
    (tmp_path / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = latchkey(system, pki, tmp_path / "people.jsonl", "--chunk", 2, "--output", "json",
                      "--state-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["records"], summary["chunks"], summary["users_created"], summary["grants_created"]) == \
        (5, 3, 5, 5)
    assert "imported 5/5 records" in result.stderr  # not a terminal: progress as plain lines
    assert_imported_once(admin, prefix, rows)

    # Run again: every chunk is in the state file, nothing is sent.
    result = latchkey(system, pki, tmp_path / "people.jsonl", "--chunk", 2, "--state-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 users created, 0 grants created, 3 chunks done before" in result.stdout


def test_a_bad_record_fails_before_anything_is_written(system, pki, admin, tmp_path):
    prefix = f"bad-{rid()[:8]}"
    rows = people(prefix, 6, [])
    rows[3]["email"] = "x" * 321
    write_csv(tmp_path / "users.csv", rows)

    result = latchkey(system, pki, tmp_path / "users.csv", "--chunk", 2)
    assert result.returncode == 2
    assert "line 5, field email: must be at most 320 characters" in result.stderr
    assert imported(admin, prefix) == {}
    assert not (tmp_path / "users.csv.import-state.json").exists()


def test_a_changed_file_refuses_to_resume_until_restarted(system, pki, admin, tmp_path):
    prefix = f"changed-{rid()[:8]}"
    rows = people(prefix, 6, [])
    write_csv(tmp_path / "users.csv", rows)

    def stop_after_one(event: ChunkDone) -> None:
        raise Interrupted
    with pytest.raises(Interrupted):
        import_file(tmp_path / "users.csv", admin.stub, chunk_size=2, on_chunk_done=stop_after_one)

    # The last record changes: resuming would mix two files.
    rows[5]["display_name"] = "Renamed"
    write_csv(tmp_path / "users.csv", rows)
    result = latchkey(system, pki, tmp_path / "users.csv", "--chunk", 2)
    assert result.returncode == 2
    assert "changed since the import" in result.stderr and "--restart" in result.stderr
    assert len(imported(admin, prefix)) == 2

    # Restarted: the unchanged first chunk replays its answer, the rest is created.
    result = latchkey(system, pki, tmp_path / "users.csv", "--chunk", 2, "--restart")
    assert result.returncode == 0, result.stderr
    assert_imported_once(admin, prefix, rows)


def test_a_user_that_already_exists_stops_the_import_at_its_line(system, pki, admin, tmp_path):
    prefix = f"exists-{rid()[:8]}"
    rows = people(prefix, 6, [])
    admin.CreateUser(pm.CreateUserRequest(user=pm.User(display_name="Elsewhere", external_id=rows[3]["external_id"])))
    write_csv(tmp_path / "users.csv", rows)

    # Line 5 holds rows[3], in the second chunk: the first chunk is done, nothing of the second.
    result = latchkey(system, pki, tmp_path / "users.csv", "--chunk", 2)
    assert result.returncode == 4, result.stderr
    assert f"line 5 (external_id '{rows[3]['external_id']}')" in result.stderr
    assert "ALREADY_EXISTS" in result.stderr and "chunk 2 (lines 4-5)" in result.stderr
    assert sorted(imported(admin, prefix)) == [rows[i]["external_id"] for i in (0, 1, 3)]


def test_a_grant_to_an_unknown_door_stops_the_import_naming_the_line_and_door(system, pki, admin, tmp_path):
    prefix = f"nodoor-{rid()[:8]}"
    missing = "00000000-0000-4000-8000-000000000000"
    rows = people(prefix, 3, [admin.door().door_id])
    rows[2]["door_ids"] = [missing]
    write_csv(tmp_path / "users.csv", rows)

    result = latchkey(system, pki, tmp_path / "users.csv")
    assert result.returncode == 4, result.stderr
    assert f"line 4 (door {missing})" in result.stderr and "NOT_FOUND" in result.stderr
