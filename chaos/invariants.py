"""After the run: what the audit log, read as the auditor, says about what the clients saw."""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass

import grpc
from latchkey.audit.v1 import audit_pb2, audit_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev

from chaos.load import Record
from chaos.model import World, denied_since, promise_deadline
from latchkit.settings import REPO_ROOT
from latchkit.tls import channel_credentials


def _promise_from_docs() -> tuple[float, float, str]:
    """The revocation promise in docs/architecture.md: "... a revoke ... within H s" while healthy, and
    "... within R s of the component's return" after an outage. 1 s each when it states none."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    healthy = re.search(r"revo\w*[^.]{0,200}?within (\d+(?:\.\d+)?) ?(ms|s)\b", text, re.IGNORECASE)
    after = re.search(r"within (\d+(?:\.\d+)?) ?s of the component's return", text)
    if healthy is None:
        return 1.0, 1.0, "default (docs/architecture.md states no revocation bound)"
    value = float(healthy.group(1)) / (1000 if healthy.group(2) == "ms" else 1)
    recovery = float(after.group(1)) if after else value
    return value, recovery, f"docs/architecture.md: {healthy.group(0)!r}; {after.group(0) if after else ''!r}"


REVOKE_PROMISE_S, RECOVERY_PROMISE_S, REVOKE_PROMISE_SOURCE = _promise_from_docs()
NON_PERMISSION = ("unlock_decided", "security_alarm")


@dataclass
class AuditLog:
    permission: list[tuple[str, int, int, int]]
    """(event id, revision, index in the revision, events in the revision)."""
    decisions: list[str]
    """decision ids, in storage order."""


def read_audit(target: str, pki) -> AuditLog:
    with grpc.secure_channel(target, channel_credentials(pki.tls("auditor"))) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        permission, decisions = [], []
        for page in stub.AuditLog(audit_pb2.AuditLogRequest(max_batch=1000), timeout=120):
            for event in [*page.events, *([page.event] if page.HasField("event") else [])]:
                env = event.envelope
                kind = env.WhichOneof("payload")
                if kind == "unlock_decided":
                    decisions.append(env.unlock_decided.decision_id)
                elif kind not in NON_PERMISSION:
                    permission.append((env.event_id, env.revision, env.revision_event_index,
                                       env.revision_event_count))
        return AuditLog(permission, decisions)


def settle(target: str, pki, record: Record, limit_s: float = 60) -> AuditLog:
    """Read the audit log until it holds every answered decision and acknowledged write, or stops
    growing for 10 s (ingest is asynchronous; spooled decisions arrive late)."""
    answered = {a[4] for a in record.answers}
    revisions = {r for _, r, _ in record.acked if r}
    deadline, last_size, last_growth = time.monotonic() + limit_s, -1, time.monotonic()
    while True:
        log = read_audit(target, pki)
        size = len(log.decisions) + len(log.permission)
        if size != last_size:
            last_size, last_growth = size, time.monotonic()
        complete = answered <= set(log.decisions) and revisions <= {p[1] for p in log.permission}
        if complete or time.monotonic() > deadline or time.monotonic() - last_growth > 10:
            return log
        time.sleep(1)


def verify_chain(target: str, pki) -> tuple[bool, int, str]:
    with grpc.secure_channel(target, channel_credentials(pki.tls("auditor"))) as channel:
        answer = audit_pb2_grpc.AuditServiceStub(channel).VerifyChain(audit_pb2.VerifyChainRequest(), timeout=120)
    detail = "" if answer.ok else f"{audit_pb2.ChainBreakKind.Name(answer.first_break.kind)} at " \
                                  f"{answer.first_break.position}: {answer.first_break.detail}"
    return answer.ok, answer.events_checked, detail


def late_grants(record: Record, world: World, outages: list[tuple[float, float]]) -> dict[str, int]:
    """GRANTED answers to a request sent after a revoke's promise had passed (the pair denied from
    the revoke until the answer), and GRANTED answers for a pair that no write ever allowed."""
    beyond, stale_view, never, worst, examples = 0, 0, 0, 0.0, []
    doors = set(world.doors)  # the harness's probe door is not the model's
    for sent, door, subject, decision, decision_id, took, view_revision in record.answers:
        if decision != ev.DECISION_GRANTED or door not in doors:
            continue
        history = world.history.get((door, subject), [])
        # Denied from before the request until its answer: a grant committed while the request
        # was in flight may rightly be seen by it.
        since = denied_since(history, sent + took) if history else None
        if not history:
            never += 1
        elif since is not None and sent > promise_deadline(since[0], REVOKE_PROMISE_S, outages,
                                                            RECOVERY_PROMISE_S):
            beyond += 1
            stale_view += 0 < view_revision < since[1]
            worst = max(worst, sent - since[0])
        else:
            continue
        if len(examples) < 10:
            examples.append({"decision_id": decision_id, "door": door, "subject": subject,
                             "sent_s": round(sent, 3), "view_revision": view_revision,
                             "history": [(round(t, 3), a, r) for t, a, r in history]})
    return {"granted_after_revoke_beyond_promise": beyond, "of_which_view_older_than_revoke": stale_view,
            "granted_never_allowed": never, "worst_late_grant_s": round(worst, 2), "examples": examples}


def check(record: Record, world: World, log: AuditLog, outages: list[tuple[float, float]]) -> dict:
    acked = {r for _, r, _ in record.acked if r}
    audited_revisions = {p[1] for p in log.permission}
    by_revision: dict[int, set[int]] = collections.defaultdict(set)
    expected: dict[int, int] = {}
    for _, revision, index, count in log.permission:
        by_revision[revision].add(index)
        expected[revision] = count
    top = max(audited_revisions | acked, default=0)
    missing_events = sum(expected[r] - len(by_revision[r]) for r in expected)
    gaps = [r for r in range(1, top + 1) if r not in audited_revisions]
    ids = collections.Counter(p[0] for p in log.permission)
    slots = collections.Counter((p[1], p[2]) for p in log.permission)
    decisions = collections.Counter(log.decisions)
    answered = {a[4] for a in record.answers}
    return {
        "acknowledged_writes": len(record.acked),
        "acknowledged_writes_lost": len(acked - audited_revisions),
        "permission_events_audited": len(log.permission),
        "permission_events_missing": missing_events + len(gaps),
        "permission_events_duplicated": max(sum(n - 1 for n in ids.values() if n > 1),
                                            sum(n - 1 for n in slots.values() if n > 1)),
        "answered_decisions": len(answered),
        "answered_decisions_missing": len(answered - set(decisions)),
        "answered_decisions_duplicated": sum(n - 1 for n in decisions.values() if n > 1),
        **late_grants(record, world, outages),
    }


FAILING_WHEN_NONZERO = ("acknowledged_writes_lost", "permission_events_missing", "permission_events_duplicated",
                        "answered_decisions_missing", "answered_decisions_duplicated",
                        "granted_after_revoke_beyond_promise", "granted_never_allowed")
