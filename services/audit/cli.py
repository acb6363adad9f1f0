"""`latchkey audit ...`: schema, chain verification and export, as an auditor would run them."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress

app = typer.Typer(help="The audit log: verify it, export it.", no_args_is_help=True)
console = Console(stderr=True)
CSV_FIELDS = ("event_id", "type", "actor", "action", "user_id", "door_id", "credential_id", "outcome", "reason",
              "revision", "source_time", "stored_time", "hash", "prev_hash")
CHAIN_FIELDS = ("hash", "prev_hash")


def _stub():
    import grpc
    from latchkey.audit.v1 import audit_pb2_grpc

    from latchkit import endpoints
    from latchkit.settings import TlsSettings
    from latchkit.tls import channel_credentials

    tls = TlsSettings.for_identity("auditor", prefix="LATCHKEY_CLIENT")
    channel = grpc.secure_channel(endpoints.AUDIT.target, channel_credentials(tls))
    return channel, audit_pb2_grpc.AuditServiceStub(channel)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _ts(value: str | None, target, option: str) -> None:
    if value:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-29 or "
                                     "2026-11-29T08:00:00+01:00)", param_hint=option) from None
        target.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))


@app.command("migrate-cql")
def migrate_cql(replication_factor: int = typer.Option(3, "--rf", help="replicas per data centre")) -> None:
    """Create the audit store's keyspace and tables on LATCHKEY_SCYLLA_HOSTS, or bring them in line with the
    CQL files (replication, TTL, compaction); prints each change. On ScyllaDB the keyspace must not use
    tablets (the single-writer fence uses lightweight transactions): it is created with tablets disabled."""
    from latchkit.scylla import ScyllaSettings
    from services.audit.adapters.scylla_store import apply_schema
    from services.audit.settings import AuditSettings

    settings = ScyllaSettings.from_env()
    if not settings.hosts:
        raise typer.BadParameter("set LATCHKEY_SCYLLA_HOSTS to the cluster's contact points")
    retention = AuditSettings.from_env().retention_days
    try:
        lines = asyncio.run(apply_schema(settings, replication_factor, retention))
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    if len(lines) == 1:
        console.print(f"unchanged: keyspace {settings.keyspace} already matches the CQL files")
    for line in lines:
        console.print(line, soft_wrap=True, markup=False)


@app.command("verify")
def verify(start: str = typer.Option(None, help="ISO time; default: the beginning"),
           end: str = typer.Option(None, help="ISO time; default: now")) -> None:
    """Recompute the hash chain over a time range and report the first break (exit 1 if any)."""
    from latchkey.audit.v1 import audit_pb2

    request = audit_pb2.VerifyChainRequest()
    _ts(start, request.start_time, "--start")
    _ts(end, request.end_time, "--end")
    channel, stub = _stub()
    with channel:
        reply = stub.VerifyChain(request, timeout=600)
    if reply.ok:
        console.print(f"chain intact: {reply.events_checked} events checked")
        return
    b = reply.first_break
    kind = audit_pb2.ChainBreakKind.Name(b.kind).removeprefix("CHAIN_BREAK_KIND_")
    console.print(f"[red]chain broken at position {b.position} (event {b.event_id}): {kind}, {b.detail}[/red]")
    raise typer.Exit(1)


@app.command("export")
def export(out: Path = typer.Option(None, help="file to write; default: standard output"),
           fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv; hash and prev_hash are base64 in both"),
           door: str = typer.Option("", help="only this door"), user: str = typer.Option("", help="only this user"),
           event_type: list[str] = typer.Option([], "--type", help="event type (repeatable)"),
           start: str = typer.Option(None, help="ISO time, inclusive"),
           end: str = typer.Option(None, help="ISO time, exclusive")) -> None:
    """Write a filtered range of the audit log as JSON Lines or CSV, oldest first.

    Both formats carry the chain fields hash and prev_hash in standard base64 with padding: what protobuf
    JSON writes for bytes, so a CSV row and a JSON line hold the same text.
    """
    from google.protobuf.json_format import MessageToDict
    from latchkey.audit.v1 import audit_pb2

    if fmt not in ("jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    request = audit_pb2.AuditLogRequest(door_id=door, user_id=user, event_types=event_type, max_batch=256)
    _ts(start, request.start_time, "--start")
    _ts(end, request.end_time, "--end")
    channel, stub = _stub()
    sink = open(out, "w", newline="") if out else sys.stdout  # noqa: SIM115 - closed below
    writer = csv.writer(sink) if fmt == "csv" else None
    if writer:
        writer.writerow(CSV_FIELDS)
    count = 0
    try:
        with channel, Progress(console=console, transient=out is None) as bar:
            task = bar.add_task("exporting audit events", total=None)
            for e in (e for item in stub.AuditLog(request, timeout=24 * 3600) for e in item.events):
                if writer:
                    writer.writerow([e.event_id, e.type, e.actor, e.action, e.user_id, e.door_id, e.credential_id,
                                     e.outcome, e.reason, e.revision, e.source_time.ToJsonString(),
                                     e.stored_time.ToJsonString(), _b64(e.hash), _b64(e.prev_hash)])
                else:
                    line = MessageToDict(e, preserving_proto_field_name=True)
                    # Protobuf JSON leaves out empty bytes; a chain field is written even then.
                    line.update({f: _b64(getattr(e, f)) for f in CHAIN_FIELDS})
                    sink.write(json.dumps(line) + "\n")
                count += 1
                if count % 500 == 0:
                    bar.update(task, completed=count)
            bar.update(task, completed=count)
    finally:
        if out:
            sink.close()
    console.print(f"exported {count} events" + (f" to {out}" if out else ""))
