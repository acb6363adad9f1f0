"""The access main process empties its metrics directory; the workers it starts share it."""

from __future__ import annotations

import os

from latchkit import metrics_files


def test_main_process_empties_the_directory_and_workers_keep_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_STATE_DIR", str(tmp_path))
    monkeypatch.delenv(metrics_files.ENV, raising=False)
    monkeypatch.delenv(metrics_files.OWNER_ENV, raising=False)
    stale = metrics_files.default_directory("access") / "counter_1.db"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"from an earlier run")
    # The main process: a directory of its instance's own, in memory (never on the data volume,
    # which can fill up under the memory-mapped files), emptied, handed down in the environment.
    directory = metrics_files.prepare("access")
    assert directory == stale.parent and not stale.exists()
    assert not directory.is_relative_to(tmp_path)
    assert os.environ[metrics_files.ENV] == str(directory) and metrics_files.enabled()
    # A worker it started (its parent prepared the directory): the same one, not emptied.
    stale.write_bytes(b"a sibling's counts")
    monkeypatch.setenv(metrics_files.OWNER_ENV, str(os.getppid()))
    assert metrics_files.prepare("access") == directory and stale.exists()


def test_operator_directory_keeps_other_files(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics_files.ENV, str(tmp_path))
    monkeypatch.delenv(metrics_files.OWNER_ENV, raising=False)
    (tmp_path / "gauge_all_7.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("not ours")
    assert metrics_files.prepare("access") == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
