"""`make bench`: every service's benchmark on one private local stack.

Each `bench/<area>_bench.py` exposes `async def run(...) -> dict` of rows
`{name: {metric: value}}` (or `{section: rows}`: a table per section). This runner
starts the stack and a PKI, runs each module, prints its tables and writes everything to
bench-results/bench-<timestamp>.json. Figures are to be quoted as ratios
against the echo floor measured in the same run. `python -m bench access --tracing`
adds Unlock's rows with tracing off and on.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import json
import platform
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devstack import certs
from devstack.stack import Stack, StackPorts
from latchkit.settings import REPO_ROOT

AREAS = ("access", "permissions", "audit", "cql")


def _table(title: str, rows: dict) -> Table:
    table = Table(title=title)
    metrics: list[str] = []
    for values in rows.values():
        for key in values if isinstance(values, dict) else ():
            if key not in metrics:
                metrics.append(key)
    # Never wrap or cut a cell: a narrow terminal gets a wide table, which stays readable
    # (cut, "unl…" and "0.8…" told nothing); the JSON has every figure too.
    table.add_column("case", no_wrap=True, min_width=max(len(name) for name in rows))
    for metric in metrics:
        table.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for name, values in rows.items():
        if not isinstance(values, dict):
            table.add_row(name, str(values))
            continue
        cells = []
        for metric in metrics:
            value = values.get(metric, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        table.add_row(name, *cells)
    return table


def _sections(area: str, rows: dict) -> list[tuple[str, dict]]:
    """An area's rows as one table, or one table per section when it returns {section: rows}
    (rows that share few metrics read better apart than as one table of mostly empty cells)."""
    def is_rows(value) -> bool:
        return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())
    if rows and all(is_rows(v) for v in rows.values()):
        return [(f"{area} benchmark: {section.replace('_', ' ')}", part) for section, part in rows.items()]
    return [(f"{area} benchmark", rows)]


async def _run_area(area: str, stack: Stack, pki_dir: Path, state_dir: Path, tracing: bool) -> dict | None:
    try:
        module = importlib.import_module(f"bench.{area}_bench")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{area}_bench":
            raise
        return None
    params = inspect.signature(module.run).parameters
    kwargs = {"stack_urls": stack.urls(), "pki_dir": pki_dir}
    if "state_dir" in params:
        kwargs["state_dir"] = state_dir / area
    if "stack" in params:
        kwargs["stack"] = stack
    if tracing and "tracing" in params:
        kwargs["tracing"] = True
    return await module.run(**kwargs)


async def main(selected: list[str], tracing: bool = False) -> int:
    # Output that is not a terminal (CI logs, a file) has no width to fit: print the table whole.
    console = Console() if sys.stdout.isatty() else Console(width=240)
    state = REPO_ROOT / ".state" / f"bench-{uuid.uuid4().hex[:8]}"
    stack = Stack(state, StackPorts.free())
    pki_dir = Path(tempfile.mkdtemp(prefix="lk-bench-pki-"))
    certs.ensure_dev_certs(pki_dir)
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "areas": {},
    }
    try:
        stack.up(cql="cql" in selected)  # the CQL engine only when its rows are asked for
        for area in selected:
            rows = await _run_area(area, stack, pki_dir, state, tracing)
            if rows is None:
                console.print(f"[yellow]{area}: no benchmark module yet[/yellow]")
                continue
            results["areas"][area] = rows
            for title, part in _sections(area, rows):
                console.print(_table(title, part))
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(pki_dir, ignore_errors=True)
    out_dir = REPO_ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    import uvloop

    chosen = [a for a in sys.argv[1:] if a in AREAS] or list(AREAS)
    # --tracing: the access area also measures its Unlock rows with tracing on (bench/access_tracing.py).
    raise SystemExit(uvloop.run(main(chosen, tracing="--tracing" in sys.argv[1:])))
