"""`latchkey permissions import`: the command around `bulk_import` (progress, output, exit codes)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from services.permissions.bulk_import import (
    BadInput,
    ChunkDone,
    ImportPlan,
    ImportStopped,
    prepare,
    run,
)

app = typer.Typer(help="The permissions service: users and grants in bulk.", no_args_is_help=True)

def admin_stub():
    """`(channel, stub)`: the permissions service at LATCHKEY_PERMISSIONS_TARGET, as the admin
    (LATCHKEY_CLIENT_TLS_{CA,CERT,KEY}; default: the dev CA's admin certificate)."""
    import grpc
    from latchkey.permissions.v1 import permissions_pb2_grpc

    from latchkit import endpoints
    from latchkit.settings import TlsSettings
    from latchkit.tls import channel_credentials

    tls = TlsSettings.for_identity("admin", prefix="LATCHKEY_CLIENT")
    channel = grpc.secure_channel(endpoints.PERMISSIONS.target, channel_credentials(tls))
    return channel, permissions_pb2_grpc.PermissionsServiceStub(channel)


class _Progress:
    """A redrawn bar on a terminal; elsewhere (a log, a pipe) one line every few seconds and at the end."""

    EVERY = 5.0

    def __init__(self, plan: ImportPlan) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.first = len(plan.records), plan.records_done
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.console.is_terminal:
            from rich import progress as rp

            self.bar = rp.Progress(rp.TextColumn("importing"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                   rp.TextColumn("{task.fields[rate]} records/s"), rp.TimeRemainingColumn(),
                                   console=self.console)
            self.task = self.bar.add_task("import", total=self.total, completed=self.first, rate="-")
            self.bar.start()

    def __call__(self, event: ChunkDone) -> None:
        now = time.monotonic()
        rate = (event.records_done - self.first) / max(now - self.started, 1e-6)
        if self.bar is not None:
            self.bar.update(self.task, completed=event.records_done, rate=f"{rate:.0f}")
        elif now - self.last >= self.EVERY or event.records_done == self.total:
            self.last = now
            eta = (self.total - event.records_done) / rate if rate else 0
            self.console.print(f"imported {event.records_done}/{self.total} records, {rate:.0f} records/s, "
                               f"ETA {eta:.0f} s", markup=False, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="CSV (header row) or JSON Lines: one user per record"),
    fmt: str = typer.Option(None, "--format", help="csv or jsonl; default: from the suffix (.csv, .jsonl)"),
    chunk: int = typer.Option(500, help="users per BatchCreateUsers call, 1..1000"),
    resume: bool = typer.Option(True, "--resume/--restart",
                                help="skip the chunks the state file lists as done, or start from the first"),
    state_dir: Path = typer.Option(None, help="where the state file goes; default: beside FILE"),
    output: str = typer.Option("text", help="text, or json: the summary as one JSON object on standard output"),
) -> None:
    """Create users (external_id, display_name, email) and grant each one the doors in door_ids.

    The whole file is checked first: a bad record is reported with its line and field, and nothing is
    sent. Interrupted, it resumes where it stopped (docs/operations.md, "Bulk import"). Exit codes: 2 the
    file or the state file is wrong, 4 the service refused a chunk, 5 it could not be reached."""
    from ops import cli_errors

    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r} is not an output; use text or json", param_hint="--output")
    try:
        plan = prepare(file, fmt=fmt, chunk_size=chunk, state_dir=state_dir, restart=not resume)
    except BadInput as exc:
        cli_errors.fail(f"{file}: {exc}", cli_errors.USAGE)
    channel, stub = admin_stub()
    progress = _Progress(plan)
    try:
        with channel:
            summary = run(plan, stub, on_chunk_done=progress)
    except ImportStopped as exc:
        unreachable = exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        cli_errors.fail(f"{file}: {exc}", cli_errors.UNREACHABLE if unreachable else cli_errors.REFUSED)
    finally:
        progress.close()
    if output == "json":
        typer.echo(json.dumps(asdict(summary)))
    else:
        skipped = f", {summary.chunks_skipped} chunks done before" if summary.chunks_skipped else ""
        typer.echo(f"imported {summary.records} records: {summary.users_created} users created, "
                   f"{summary.grants_created} grants created{skipped}, {summary.seconds:.1f} s "
                   f"(revision {summary.revision})")
