"""Bulk import of users and their door grants from CSV or JSON Lines, over the batch RPCs.

The whole file is checked before anything is sent (it is local and cheap), then sent in chunks:
BatchCreateUsers for a chunk's users, then BatchGrantAccess for their grants. Each batch carries a
request_id derived from the chunk's records, its index and the step, so a rerun replays the answers
the server stored instead of creating users twice; a state file beside the input records the chunks
done, so a resumed import skips them without calling the server (docs/operations.md, "Bulk import").
The command around it is `cli.py` (`latchkey permissions import`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = ("external_id", "display_name", "email", "door_ids")
REQUIRED = ("external_id", "display_name")
MAX_CHARS = {"external_id": 200, "display_name": 200, "email": 320}  # the server's limits (permissions.proto)
MAX_BATCH = 1000
# CANCELLED too: this command never cancels a call, so a CANCELLED comes from the server's gRPC,
# which drops calls it could not take in when the service is past capacity. Every batch carries its
# request_id, so a retry of one that did run is answered from the stored answer, not applied twice.
RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED")
MAX_RETRY_WAIT = 30.0
REQUEST_OVERHEAD = 128  # a batch request's own fields (its request_id) next to its items


class BadInput(ValueError):
    """The file, an option or the state file is wrong: nothing was sent."""


class ImportStopped(Exception):
    """The server refused a chunk (or stayed unavailable): chunks before it are done and recorded."""

    def __init__(self, message: str, code: Any) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Record:
    line: int
    external_id: str
    display_name: str
    email: str = ""
    door_ids: tuple[str, ...] = ()


def _bad(line: int, name: str, reason: str) -> BadInput:
    return BadInput(f"line {line}, field {name}: {reason}")


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "jsonl"):
            raise BadInput(f"--format must be csv or jsonl, not {fmt!r}")
        return fmt
    by_suffix = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower())
    if by_suffix is None:
        raise BadInput(f"cannot tell the format of {path.name} from its suffix; pass --format csv or --format jsonl")
    return by_suffix


def parse(data: bytes, fmt: str) -> list[Record]:
    """Every record of the file, checked as the server would check it; the first problem raises BadInput."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"the file is not UTF-8 (byte {exc.start})") from None
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in (_csv_rows(text) if fmt == "csv" else _jsonl_rows(text)):
        record = _record(line, row)
        if record.external_id in seen:
            raise _bad(line, "external_id", f"{record.external_id!r} is already on line {seen[record.external_id]}")
        seen[record.external_id] = line
        records.append(record)
    if not records:
        raise BadInput("the file holds no records")
    return records


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    names = [h.strip() for h in next(reader, [])]
    if not any(names):
        raise BadInput(f"line 1: a header row is required ({','.join(COLUMNS)}; email and door_ids optional)")
    for name in names:
        if name not in COLUMNS:
            raise BadInput(f"line 1: unknown column {name!r}; the columns are {', '.join(COLUMNS)}")
        if names.count(name) > 1:
            raise BadInput(f"line 1: column {name!r} appears twice")
    for name in REQUIRED:
        if name not in names:
            raise BadInput(f"line 1: the column {name!r} is required")
    line = reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            if len(row) != len(names):
                raise BadInput(f"line {line}: {len(row)} fields where the header has {len(names)}")
            values: dict[str, Any] = dict(zip(names, row, strict=True))
            if "door_ids" in values:
                values["door_ids"] = [d.strip() for d in values["door_ids"].split(";") if d.strip()]
            yield line, values
        line = reader.line_num + 1  # where the next record starts (a quoted field may span lines)


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Split on "\n" only: str.splitlines also splits on U+2028 and others, which JSON strings may hold.
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadInput(f"line {line}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise BadInput(f"line {line}: a record must be a JSON object")
        for name in row:
            if name not in COLUMNS:
                raise BadInput(f"line {line}: unknown field {name!r}; the fields are {', '.join(COLUMNS)}")
        yield line, row


def _record(line: int, row: dict[str, Any]) -> Record:
    texts = {}
    for name, limit in MAX_CHARS.items():
        value = row.get(name) or ""
        if not isinstance(value, str):
            raise _bad(line, name, "must be a string")
        if name in REQUIRED and not value.strip():
            raise _bad(line, name, "is required")
        if len(value) > limit:
            raise _bad(line, name, f"must be at most {limit} characters")
        if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise _bad(line, name, "must not contain control characters")
        texts[name] = value
    doors = row.get("door_ids") or []
    if not isinstance(doors, list):
        raise _bad(line, "door_ids", "must be a list of door ids")
    door_ids: list[str] = []
    for i, door in enumerate(doors):
        try:
            canonical = str(uuid.UUID(door)) if isinstance(door, str) and len(door) == 36 else ""
        except ValueError:
            canonical = ""
        if not canonical:
            raise _bad(line, f"door_ids[{i}]", f"{str(door)[:40]!r} is not a door id (a UUID)")
        if canonical in door_ids:
            raise _bad(line, f"door_ids[{i}]", f"door {canonical} is listed twice")
        door_ids.append(canonical)
    return Record(line, texts["external_id"], texts["display_name"], texts["email"], tuple(door_ids))


def state_path(path: Path, state_dir: Path | None = None) -> Path:
    return (state_dir or path.parent) / f"{path.name}.import-state.json"


@dataclass
class ImportPlan:
    """A checked file and what its state file says is already done; nothing has been sent yet."""

    path: Path
    records: list[Record]
    chunks: list[list[Record]]
    file_sha256: str
    chunk_size: int
    state_file: Path
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def records_done(self) -> int:
        return sum(len(self.chunks[i]) for i in self.done)

    def record_done(self, index: int, user_ids: list[str], grants: int, revision: int) -> None:
        self.done[index] = {"user_ids": user_ids, "grants": grants, "revision": revision}
        state = {"file": self.path.name, "file_sha256": self.file_sha256, "chunk_size": self.chunk_size,
                 "records": len(self.records), "chunks": {str(i): c for i, c in sorted(self.done.items())}}
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.state_file)  # a crash leaves the old state or the new, never half of one


def prepare(path: Path | str, *, fmt: str | None = None, chunk_size: int = 500, state_dir: Path | None = None,
            restart: bool = False) -> ImportPlan:
    """Read and check the whole file and its state file; raises BadInput naming the line and field."""
    path = Path(path)
    if not 1 <= chunk_size <= MAX_BATCH:
        raise BadInput(f"--chunk must be 1..{MAX_BATCH}, not {chunk_size}")
    data = path.read_bytes()
    records = parse(data, detect_format(path, fmt))
    plan = ImportPlan(path, records, [records[i:i + chunk_size] for i in range(0, len(records), chunk_size)],
                      hashlib.sha256(data).hexdigest(), chunk_size, state_path(path, state_dir))
    if plan.state_file.exists() and not restart:
        try:
            state = json.loads(plan.state_file.read_text())
            done = {int(i): dict(c) for i, c in state["chunks"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{plan.state_file} is not an import state file; pass --restart to start over, "
                           "or remove it") from None
        if state.get("file_sha256") != plan.file_sha256:
            raise BadInput(f"{path} changed since the import recorded in {plan.state_file}; resuming would mix "
                           "two files. Run again with --restart to import this file from its first record")
        if state.get("chunk_size") != chunk_size:
            raise BadInput(f"{plan.state_file} was written with --chunk {state.get('chunk_size')}; resume with "
                           "that, or pass --restart")
        plan.done = done
    return plan


@dataclass(frozen=True)
class ChunkDone:
    """Reported after a chunk is committed and recorded in the state file."""

    index: int
    first_line: int
    last_line: int
    records_done: int
    records_total: int


@dataclass
class ImportSummary:
    records: int
    chunks: int
    chunks_skipped: int
    users_created: int
    grants_created: int
    revision: int
    seconds: float
    state_file: str


def run(plan: ImportPlan, stub, *, on_chunk_done: Callable[[ChunkDone], None] | None = None,
        timeout: float = 60.0, attempts: int = 8, max_message_bytes: int | None = None) -> ImportSummary:
    """Send every chunk the state file does not list as done; `stub` is a PermissionsServiceStub (sync).
    `max_message_bytes`: the server's request limit (default: LATCHKEY_PERMISSIONS_MAX_MESSAGE_BYTES)."""
    from latchkit.settings import env_int
    from services.permissions.settings import MAX_MESSAGE_BYTES

    started = time.monotonic()
    limit = max_message_bytes or env_int("LATCHKEY_PERMISSIONS_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES, minimum=1024)
    sender = _Sender(stub, timeout, attempts, limit - REQUEST_OVERHEAD)
    summary = ImportSummary(len(plan.records), len(plan.chunks), len(plan.done), 0, 0,
                            max((c["revision"] for c in plan.done.values()), default=0), 0.0, str(plan.state_file))
    done = plan.records_done
    for index, chunk in enumerate(plan.chunks):
        if index in plan.done:
            continue
        user_ids, grants, revision = sender.chunk(chunk, index)
        plan.record_done(index, user_ids, grants, revision)
        summary.users_created += len(chunk)
        summary.grants_created += grants
        summary.revision = max(summary.revision, revision)
        done += len(chunk)
        if on_chunk_done:
            on_chunk_done(ChunkDone(index, chunk[0].line, chunk[-1].line, done, len(plan.records)))
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def import_file(path: Path | str, stub, *, fmt: str | None = None, chunk_size: int = 500,
                state_dir: Path | None = None, restart: bool = False,
                on_chunk_done: Callable[[ChunkDone], None] | None = None, timeout: float = 60.0) -> ImportSummary:
    """`prepare` then `run`: the whole import, in-process (what the command and the bench call)."""
    plan = prepare(path, fmt=fmt, chunk_size=chunk_size, state_dir=state_dir, restart=restart)
    return run(plan, stub, on_chunk_done=on_chunk_done, timeout=timeout)


def _request_id(chunk: list[Record], index: int, step: str) -> str:
    # From the chunk's own records (not the whole file's hash): after --restart with an edited file,
    # chunks that did not change replay their stored answers instead of meeting their own users.
    content = json.dumps([(r.external_id, r.display_name, r.email, r.door_ids) for r in chunk]).encode()
    return "import-" + hashlib.sha256(b"%d\0%s\0" % (index, step.encode()) + content).hexdigest()[:48]


@dataclass(frozen=True)
class _Sender:
    """Sends one chunk: its users, then their grants, each in as few batches as the server accepts."""

    stub: Any
    timeout: float
    attempts: int
    max_bytes: int

    def chunk(self, chunk: list[Record], index: int) -> tuple[list[str], int, int]:
        from latchkey.permissions.v1 import permissions_pb2 as pm

        where = f"chunk {index + 1} (lines {chunk[0].line}-{chunk[-1].line})"
        users = [(pm.CreateUserRequest(user=pm.User(display_name=r.display_name, email=r.email,
                                                    external_id=r.external_id)),
                  f"line {r.line} (external_id {r.external_id!r})", repr(r.external_id)) for r in chunk]
        replies = self._send(self.stub.BatchCreateUsers, pm.BatchCreateUsersRequest, users, where,
                             _request_id(chunk, index, "users"), users_written=False)
        user_ids = [u.user_id for reply in replies for u in reply.users]
        grants = [(pm.GrantAccessRequest(grant=pm.Grant(user_id=user_id, door_id=door)), f"line {r.line} (door {door})",
                   "") for r, user_id in zip(chunk, user_ids, strict=True) for door in r.door_ids]
        replies += self._send(self.stub.BatchGrantAccess, pm.BatchGrantAccessRequest, grants, where,
                              _request_id(chunk, index, "grants"), users_written=True)
        return user_ids, len(grants), max(reply.revision for reply in replies)

    def _send(self, method, request_type, items: list[tuple[Any, str, str]], where: str, request_id: str,
              users_written: bool) -> list:
        import grpc

        replies = []
        for k, part in enumerate(_batches(items, self.max_bytes)):
            request = request_type(request_id=f"{request_id}-{k}", requests=[item for item, _, _ in part])
            try:
                replies.append(_call(method, request, self.timeout, self.attempts))
            except grpc.RpcError as exc:
                written = ("nothing of this chunk was written" if not (k or users_written) else
                           "this chunk is partly written (a rerun replays that part)")
                raise _stopped(exc, where, [(label, needle) for _, label, needle in part], written) from None
        return replies


def _batches(items: list[tuple[Any, str, str]], max_bytes: int) -> Iterator[list[tuple[Any, str, str]]]:
    """Consecutive runs of at most MAX_BATCH items whose request stays under the server's message limit
    (LATCHKEY_PERMISSIONS_MAX_MESSAGE_BYTES, 1 MiB by default: a full chunk of 1,000 fits)."""
    part: list[tuple[Any, str, str]] = []
    size = 0
    for item in items:
        cost = item[0].ByteSize() + 4  # the item, its field tag and its length
        if part and (len(part) == MAX_BATCH or size + cost > max_bytes):
            yield part
            part, size = [], 0
        part.append(item)
        size += cost
    if part:
        yield part


def _call(method, request, timeout: float, attempts: int):
    """The call, retried with the same request (so the same request_id) while the server is unavailable
    or overloaded (`RETRIED`): the server's RetryInfo delay if it gives one, else an exponential backoff."""
    import grpc

    backoff = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code().name not in RETRIED or attempt == attempts or _too_large(exc):
                raise
            time.sleep(_retry_delay(exc) or backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 10.0)
    raise AssertionError("unreachable")


def _stopped(exc, where: str, items: list[tuple[str, str]], written: str) -> ImportStopped:
    """The failure, naming the chunk and, when the server names an item (or its needle, an external_id),
    the item's line."""
    code, details = exc.code(), exc.details() or ""
    named = re.search(r"requests\[(\d+)\]", details)
    if named and int(named.group(1)) < len(items):
        at = ", " + items[int(named.group(1))][0]
    else:  # ALREADY_EXISTS names the external_id, perhaps without the index
        at = next((", " + label for label, needle in items if needle and needle in details), "")
    retried = " (retried until giving up)" if code.name in RETRIED and not _too_large(exc) else ""
    if _too_large(exc):
        details += " (the server's LATCHKEY_PERMISSIONS_MAX_MESSAGE_BYTES is below this one's)"
    return ImportStopped(f"{where}{at}: {code.name}{retried}: {details}; {written}; a rerun resumes with "
                         "this chunk", code)


def _too_large(exc) -> bool:
    """The server's refusal of a request over its message limit: RESOURCE_EXHAUSTED too, but no retry helps."""
    return exc.code().name == "RESOURCE_EXHAUSTED" and "larger than max" in (exc.details() or "")


def _retry_delay(exc) -> float | None:
    """The server's google.rpc.RetryInfo delay, if its status details carry one (capped)."""
    from latchkit.errors import retry_delay_s

    delay = retry_delay_s(exc)
    return None if delay is None else min(delay, MAX_RETRY_WAIT)
