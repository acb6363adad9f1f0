"""One process per decision spool: a second opener is refused, loudly, until the first lets go."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from latchkit.settings import REPO_ROOT
from services.access.adapters.sqlite_spool import SpoolInUse, SqliteDecisionSpool


async def test_a_second_spool_on_the_same_path_is_refused(tmp_path):
    first = SqliteDecisionSpool(tmp_path / "decisions-0.sqlite")
    first.open()
    await first.append([("e1", "latchkey.decisions.d", b"x")])
    # Another opener of the same file (another process, or a second object) is refused ...
    second = SqliteDecisionSpool(tmp_path / "decisions-0.sqlite")
    with pytest.raises(SpoolInUse):
        second.open()
    with pytest.raises(SpoolInUse):
        await second.count()  # using it without an explicit open takes the lock too
    # ... and so is another process.
    other = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from services.access.adapters.sqlite_spool import SqliteDecisionSpool; "
         "SqliteDecisionSpool(Path(sys.argv[1])).open()", str(tmp_path / "decisions-0.sqlite")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "in use by another process" in other.stderr
    # Once the first lets go, the next one takes the spool and finds its rows.
    await first.close()
    second.open()
    assert await second.count() == 1
    await second.close()
