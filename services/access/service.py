"""Unlock: validate, look up (Redis, else the view), decide, answer; the event leaves off-path.

On any doubt the answer is DENIED: an unknown credential, a missing pair, a
view and cache that both fail (UNAVAILABLE). The same request_id at the same
door returns the first answer and is not a second unlock (no second event).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, cast

from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev
from prometheus_client import Counter

from access_rules import codec as access_codec
from access_rules.rules import Reason, decide
from latchkit import envelope, secret_hash, timestamps, tracing
from latchkit.authz import may_unlock
from latchkit.errors import InvalidArgument, PermissionDenied, Unavailable
from latchkit.identity import Principal
from services.access import ids
from services.access.decisions import DecisionNotDurable, DecisionPublisher, wait_durable
from services.access.domain import DenialThrottle, ReplayMemory, cred_key
from services.access.local_cache import LocalCache
from services.access.lookup import (
    ANSWER_MARGIN_SECONDS,
    DENIED,
    GRANTED,
    Decision,
    UnlockLookup,
    lookups_deadline,
)
from services.access.ports import PairRow, UnlockCache, UnlockView
from services.access.projector import Projector
from services.access.startup_floor import UNKNOWN as FLOOR_UNKNOWN
from services.access.startup_floor import StartupFloor

log = logging.getLogger("latchkey.access.unlock")
SECRET_LIMITS = {ev.CREDENTIAL_KIND_CARD: (4, 64), ev.CREDENTIAL_KIND_PIN: (4, 12), ev.CREDENTIAL_KIND_MOBILE: (16, 256)}
"""Each credential kind's secret length (characters): fewest, most."""


DECISIONS = Counter("latchkey_access_unlock_decisions", "Unlock answers by decision and reason",
                    ["decision", "reason"])


@functools.cache
def _decided(decision: int, reason: int):
    """The DECISIONS child for one (decision, reason): labels looked up once, not per call."""
    return DECISIONS.labels(ev.Decision.Name(decision).removeprefix("DECISION_"),
                            ev.DecisionReason.Name(reason).removeprefix("DECISION_REASON_"))


UNLOCK_DECIDED = envelope.PAYLOAD_TYPES["unlock_decided"]
DURABLE_WAIT_SECONDS = 5.0
"""How long Unlock waits for its decision to be durable when the call has no deadline (tests)."""
MIN_REVISION_RESERVE_SECONDS = 2 * ANSWER_MARGIN_SECONDS
"""What a `min_revision` wait leaves of the caller's deadline: time to record the decision
(durably, before answering) and to send the answer."""


def _never_shown() -> float | None:
    return None


def check_id(value: str, field: str) -> None:
    """An id field of Unlock: present, at most 64 printable characters (else INVALID_ARGUMENT naming it)."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 64 or not value.isprintable():
        raise InvalidArgument(field, "must be at most 64 printable characters")


class DecisionRecord(NamedTuple):
    """One Unlock decision as its `UnlockDecided` event carries it: the arguments of
    `encode_decision`, in order. A tuple with names, because the publisher encodes later
    from an argument tuple (`record_deferred`): no copy into one is needed."""

    decision_id: str
    actor: str
    door_id: str
    user_id: str
    credential_id: str
    request_id: str
    decision: int
    reason: int
    revision: int
    """The view's revision the decision was made from."""
    server_seconds: int
    server_nanos: int
    latency_ns: int
    controller: tuple[int, int] | None
    """The controller's clock (seconds, nanos), if it sent it."""


class UnlockService:
    def __init__(self, view: UnlockView, cache: UnlockCache, decisions: DecisionPublisher,
                 hmac_key: bytes, *, projector: Projector | None, min_revision_wait: float,
                 credential_throttle: DenialThrottle, door_throttle: DenialThrottle,
                 local: LocalCache | None = None, startup_floor: StartupFloor | None = None,
                 view_fresh_at: Callable[[], float | None] | None = None) -> None:
        self.view = view
        # When this instance last showed its view had the whole stream (freshness.py); with
        # none, no fail-closed door opens.
        self.view_fresh_at = view_fresh_at or _never_shown
        self.startup_floor = startup_floor
        self.local = local
        self.cache = cache
        self.lookup = UnlockLookup(view, cache, local, self._verdict)
        self.decisions = decisions
        self.hasher = secret_hash.SecretHasher(hmac_key)
        self.projector = projector
        self.min_revision_wait = min_revision_wait
        self.credential_throttle = credential_throttle
        self.door_throttle = door_throttle
        self.replays = ReplayMemory()
        self._decoded: dict[tuple[str, str, int], object] = {}
        self._ids = ids.Sequence()
        # With tracing on, the first Unlock answered from a change ends that change's trace
        # (`access.first_unlock`): the local cache's feed remembers each changed pair; with no
        # local cache, the projector (in the process that runs it) does.
        self.first_sight = local.first_sight if local is not None else None
        if self.first_sight is None and projector is not None:
            self.first_sight = projector.first_sight = tracing.FirstSight()

    # ---- revisions ----------------------------------------------------------------
    async def applied_revision(self) -> int:
        if self.projector is not None:
            return self.projector.watermark
        return await self.view.watermark()

    async def wait_for_revision(self, revision: int, wait_seconds: float) -> int:
        """The applied revision once it reaches `revision`, or the last seen one at the timeout."""
        if self.projector is not None:
            # In this task, with nothing shared with the projector but its Event of the moment:
            # a cancel here (gRPC's deadline, then its reset) cannot leave anything held.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_seconds, 0.0)):
                    await self.projector.reached(revision)
            return self.projector.watermark
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        applied = await self.view.watermark()
        while applied < revision and time.monotonic() < deadline:
            # Another process projects: poll its progress in the shared view.
            await asyncio.sleep(min(0.002, max(deadline - time.monotonic(), 0)))
            applied = await self.view.watermark()
        return applied

    # ---- unlock ---------------------------------------------------------------------
    async def unlock(self, principal: Principal | None, request: access_pb2.UnlockRequest,
                     time_remaining: float | None) -> access_pb2.UnlockResponse:
        """Validate; replay a known request id; the revision to answer at; the throttles; the
        lookups (lookup.py) and the verdict; record the decision, durably; answer."""
        # The hot path: fields are read once into locals (each protobuf attribute read is a call).
        started = time.perf_counter_ns()
        door_id, request_id = request.door_id, request.request_id
        kind, secret_hash = self._validate(principal, request, door_id, request_id)

        earlier = self.replays.get(door_id, request_id)
        if earlier is not None:
            # The first call may still be waiting for its decision to be durable.
            await self._durable(self.decisions.recorded_so_far(), time_remaining, started)
            return access_pb2.UnlockResponse.FromString(earlier)

        min_revision = request.min_revision
        floor = self.startup_floor.revision if self.startup_floor is not None else 0
        if floor > min_revision:
            # Until this process's view has reached what the bus held when it started, an answer
            # could predate a revoke acknowledged while it was down (startup_floor.py).
            min_revision = floor
        local = self.local
        if local is not None and local.answers_at(min_revision):
            # The per-process cache has applied everything the view has (and min_revision).
            revision, deadline, decided = local.watermark, None, None
        else:
            local = None
            revision, deadline, decided = await self._view_revision(request, min_revision, time_remaining)
        # The two throttles are separate maps: a door id and a credential key never meet.
        cred_k = cred_key(kind, secret_hash) if secret_hash else ""
        if decided is None and (self.door_throttle.throttled(door_id)
                                or (cred_k and self.credential_throttle.throttled(cred_k))):
            decided = Decision(DENIED, Reason.RATE_LIMITED, request.user_id)
        if decided is None:
            lookup = self.lookup
            hit = lookup.in_memory(local, door_id, request.user_id, cred_k) if local is not None else None
            if deadline is None:
                deadline = lookups_deadline(time_remaining)
            found = await lookup.decide(request, cred_k, secret_hash, local, hit, deadline)
            if isinstance(found, bytes):  # another process answered this request id first
                self.replays.put(door_id, request_id, found)
                return access_pb2.UnlockResponse.FromString(found)
            decided = found

        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        decision_id = self._ids.next()
        decision, reason, user_id = decided.decision, decided.reason, decided.user_id
        # A Reason's value is its DecisionReason number (access_rules.rules).
        response = access_pb2.UnlockResponse(decision=decision, reason=cast("ev.DecisionReason", reason),
                                             decision_id=decision_id, view_revision=revision, user_id=user_id)
        server_time = response.server_time  # set in place: no Timestamp built and copied in
        server_time.seconds, server_time.nanos = seconds, nanos
        answer = response.SerializeToString()
        self.replays.put(door_id, request_id, answer)
        if decision == DENIED and reason not in (Reason.RATE_LIMITED, Reason.UNAVAILABLE, Reason.STALE_VIEW):
            self._count_denial(principal, door_id, cred_k, decided)
        credential = decided.credential
        controller = None
        if request.HasField("controller_time"):
            t = request.controller_time
            controller = (t.seconds, t.nanos)
        durable = self._record(DecisionRecord(
            decision_id, principal.uri if principal else "", door_id, user_id,
            credential.credential_id if credential is not None else "", request_id, int(decision), int(reason),
            revision, seconds, nanos, time.perf_counter_ns() - started, controller))
        if durable is not None:
            await self._durable(durable, time_remaining, started)
        # Only a durable answer is shared with the other processes (Redis) for retries.
        self.lookup.remember(door_id, request_id, answer)
        if tracing.ENABLED and user_id and self.first_sight is not None:
            self.first_sight.seen((door_id, user_id), revision)
        return response

    def _validate(self, principal: Principal | None, request: access_pb2.UnlockRequest, door_id: str,
                  request_id: str) -> tuple[int, bytes]:
        """The request's fields and the caller's right to this door; (kind, secret hash) of its credential."""
        check_id(door_id, "door_id")
        # Required: a controller's retry must be recognisable as one (not a second decision).
        check_id(request_id, "request_id")
        subject = request.WhichOneof("subject")
        if subject is None:
            raise InvalidArgument("user_id", "a user_id or a credential is required")
        secret_hash, kind = b"", 0
        if subject == "user_id":
            check_id(request.user_id, "user_id")
        else:
            cred = request.credential
            kind, secret = cred.kind, cred.secret
            limits = SECRET_LIMITS.get(kind)
            if limits is None:
                raise InvalidArgument("credential.kind", "must be CARD, PIN or MOBILE")
            low, high = limits
            if not low <= len(secret) <= high:
                raise InvalidArgument("credential.secret", f"must be {low}..{high} characters for this kind")
            secret_hash = self.hasher.hash(kind, secret)
        if request.HasField("controller_time"):
            t = request.controller_time
            if not timestamps.is_valid(t):
                raise InvalidArgument("controller_time", "must be a valid timestamp")
        if not may_unlock(principal, door_id):
            self._alarm(principal, "WRONG_DOOR_IDENTITY", door_id,
                        f"{principal.uri if principal else 'unknown'} asked to open door {door_id}")
            raise PermissionDenied(f"this certificate may not open door {door_id[:64]}")
        return kind, secret_hash

    async def _view_revision(self, request: access_pb2.UnlockRequest, min_revision: int,
                             time_remaining: float | None) -> tuple[int, float | None, Decision | None]:
        """(the view's revision the answer claims; the lookups' deadline; a decision already
        made: the view down, or short of `min_revision` after the bounded wait).

        Raises UNAVAILABLE when the request asks for a revision the view cannot be shown to have.
        """
        deadline = lookups_deadline(time_remaining)
        decided = None
        try:
            async with asyncio.timeout_at(deadline):
                revision = await self.applied_revision()
        except Exception as exc:  # the view is down or too slow, whatever the error: deny
            log.error("unlock view unavailable", extra={"error": repr(exc)})
            if request.min_revision:
                raise Unavailable("the view is unavailable; retry shortly") from exc
            revision, decided = 0, Decision(DENIED, Reason.UNAVAILABLE, request.user_id)
        if min_revision > revision:
            # At most min_revision_wait, and never so long that the decision cannot be recorded
            # and answered within the caller's deadline: a view that does not get there in time
            # is a DENIED (STALE_VIEW) the door and the audit log both see, not a status.
            wait = self.min_revision_wait if min_revision != FLOOR_UNKNOWN else 0.0
            if time_remaining is not None:
                wait = max(min(wait, time_remaining - MIN_REVISION_RESERVE_SECONDS), 0.0)
            try:
                async with asyncio.timeout_at(deadline):
                    revision = await self.wait_for_revision(min_revision, wait)
            except TimeoutError:
                pass  # the view's watermark did not answer in time: it is still where it was
            except Exception as exc:  # the view failed while we waited, whatever the error
                raise Unavailable(f"the view is unavailable; min_revision {min_revision} cannot be shown, "
                                  "retry shortly") from exc
            if decided is None and revision < min_revision:
                decided = Decision(DENIED, Reason.STALE_VIEW, request.user_id)
        return revision, deadline, decided

    def _count_denial(self, principal: Principal | None, door_id: str, cred_k: str, decided: Decision) -> None:
        """A denial on the rules counts against the door and the credential; past a limit, an alarm."""
        if self.door_throttle.deny(door_id):
            self._alarm(principal, "DOOR_DENIALS_THROTTLED", door_id, "repeated denials at this door")
        if cred_k and self.credential_throttle.deny(cred_k):
            credential = decided.credential
            self._alarm(principal, "CREDENTIAL_DENIALS_THROTTLED", door_id,
                        "repeated denials of one credential", credential.credential_id if credential else "")

    async def _durable(self, group, time_remaining: float | None, started_ns: int) -> None:
        """Wait until the decision (`group`, from the publisher) is durable, or refuse to answer.

        Not a DENIED: that would be a decision too, one that could not be recorded either,
        answered under a decision id whose event says otherwise. UNAVAILABLE gives no
        decision: the door stays shut and the controller retries (the same request_id then
        gets this decision, once it is durable).
        """
        if group is None or group.done():
            return
        elapsed = (time.perf_counter_ns() - started_ns) / 1e9
        remaining = (time_remaining if time_remaining is not None else DURABLE_WAIT_SECONDS) - elapsed
        try:
            await wait_durable(group, lookups_deadline(remaining))
        except DecisionNotDurable as exc:
            raise Unavailable("the decision could not be recorded in time; retry shortly") from exc

    async def settled(self) -> None:
        """Return once the background cache writes started so far (fills, shared answers) have ended."""
        await self.lookup.settled()

    def _verdict(self, pair: PairRow) -> tuple[ev.Decision, Reason]:
        access = self._decode(pair)
        age: float | None = 0.0
        if access.door_max_view_staleness:
            # A fail-closed door: how old the proof is that the view had the whole stream.
            fresh_at = self.view_fresh_at()
            age = None if fresh_at is None else time.time() - fresh_at
        granted, reason = decide(access, dt.datetime.now(dt.UTC), age)
        return GRANTED if granted else DENIED, reason

    def _decode(self, pair: PairRow):
        key = (pair.door_id, pair.user_id, pair.version)
        access = self._decoded.get(key)
        if access is None:
            access = access_codec.from_event(ev.AccessChanged.FromString(pair.payload))
            if len(self._decoded) > 50_000:
                self._decoded.clear()
            self._decoded[key] = access
        return access

    # ---- events ------------------------------------------------------------------------
    def _record(self, record: DecisionRecord):
        # One decision, one event: the decision id is also the event id. Only the values are
        # taken here; the publisher encodes the envelope later, with others, off the response path.
        _decided(record.decision, record.reason).inc()
        return self.decisions.record_deferred(record.decision_id, envelope.decision_subject(record.door_id),
                                              encode_decision, record)

    def _alarm(self, principal, kind: str, door_id: str, detail: str, credential_id: str = "") -> None:
        alarm = ev.SecurityAlarm(kind=kind, door_id=door_id[:64], credential_id=credential_id, detail=detail[:200])
        self.decisions.record(envelope.build(alarm, actor=principal.uri if principal else "",
                                             aggregate_key=f"door/{door_id[:64]}"))


def encode_decision(decision_id: str, actor: str, door_id: str, user_id: str, credential_id: str, request_id: str,
                    decision: int, reason: int, revision: int, server_seconds: int, server_nanos: int,
                    latency_ns: int, controller: tuple[int, int] | None) -> bytes:
    """The serialized Envelope of one UnlockDecided (built in place: no nested copies); the
    arguments are a `DecisionRecord`'s fields, in order.

    The envelope's `revision` stays 0 (no permissions transaction wrote this event); the
    view's revision the decision was made from is `UnlockDecided.view_revision`.
    """
    env = ev.Envelope(event_id=decision_id, type=UNLOCK_DECIDED, actor=actor,
                      revision_event_count=1, aggregate_key="door/" + door_id)
    # Each read of a message field builds a wrapper object: one read per field here.
    t = env.occurred_at
    t.seconds, t.nanos = server_seconds, server_nanos
    decided = env.unlock_decided
    decided.decision_id = decision_id
    decided.door_id = door_id
    decided.user_id = user_id
    decided.credential_id = credential_id
    decided.request_id = request_id
    # The record carries the enums' numbers: a `Decision` and a `Reason` (DecisionReason's numbers).
    decided.decision = cast("ev.Decision", decision)
    decided.reason = cast("ev.DecisionReason", reason)
    decided.view_revision = revision
    t = decided.server_time
    t.seconds, t.nanos = server_seconds, server_nanos
    latency = decided.decision_latency
    latency.seconds, latency.nanos = divmod(latency_ns, 1_000_000_000)
    if controller is not None:
        t = decided.controller_time
        t.seconds, t.nanos = controller
    return env.SerializeToString()
