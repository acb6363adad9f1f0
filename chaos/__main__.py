"""`python -m chaos [--rounds N] [--fault NAME ...]`: run, print the table, write the JSON, exit 1 on a failure."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from rich.console import Console
from rich.table import Table

from chaos import faults, runner
from latchkit.settings import REPO_ROOT


def tables(result: dict) -> list[Table]:
    checks = Table(title=f"chaos invariants ({result['rounds']} rounds, {result['seconds']} s, "
                         f"revoke promise {result['promise_s']:g} s, {result['recovery_promise_s']:g} s after a return: "
                         f"{result['promise_source']})")
    checks.add_column("invariant", no_wrap=True)
    checks.add_column("value", justify="right", no_wrap=True)
    checks.add_column("verdict", no_wrap=True)
    for name, value in result.get("invariants", {}).items():
        bad = name in runner.invariants.FAILING_WHEN_NONZERO and value
        checks.add_row(name, str(value), "FAIL" if bad else ("ok" if name in runner.invariants.FAILING_WHEN_NONZERO
                                                              else ""))
    chain = result.get("chain", {})
    checks.add_row("audit chain verified", f"{chain.get('events_checked', '?')} events",
                   "ok" if chain.get("ok") else f"FAIL {chain.get('first_break', 'not checked')}")
    checks.add_row("processes left behind", str(len(result["left_behind"])), "FAIL" if result["left_behind"] else "ok")
    recovery = Table(title=f"recovery after each fault (spool disk full by {result.get('spool_disk_full_by')})")
    for column in ("round", "fault", "outage s", "recovery s", "notes"):
        recovery.add_column(column, no_wrap=True)
    for f in result["faults"]:
        notes = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("round", "fault", "recovery_s", "outage_s"))
        recovery.add_row(str(f["round"]), f["fault"], f"{f['outage_s']:.1f}",
                         "NEVER" if f["recovery_s"] is None else f"{f['recovery_s']:.2f}", notes)
    return [recovery, checks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fault", action="append", help="only these faults (repeatable); default: all",
                        choices=[f.name for f in faults.all_faults()])
    parser.add_argument("--short", action="store_true", help="make test's subset of faults")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each fault lasts")
    args = parser.parse_args(argv)
    names = faults.SHORT if args.short else tuple(args.fault or ())
    result = runner.run(rounds=max(1, min(args.rounds, 20)), names=names or None, hold_s=args.hold)
    console = Console(width=200)
    for table in tables(result):
        console.print(table)
    console.print(f"load {result.get('load')}")
    console.print(f"answers {result.get('answers')}, unlock errors {result.get('unlock_errors')} "
                  f"({result.get('unlock_errors_while_healthy')} in the 2 s after a recovery), "
                  f"unknown writes {result.get('unknown_writes')}, refused writes {result.get('refused_writes')}")
    out = REPO_ROOT / "chaos-results" / f"chaos-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"written {out.relative_to(REPO_ROOT)}")
    for failure in result["failures"]:
        console.print(f"[red]FAIL[/red] {failure}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
