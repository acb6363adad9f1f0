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

from latchkey.access.v1 import access_pb2
from latchkey.events.v1 import events_pb2 as ev
from prometheus_client import Counter

from latchkit import access_codec, envelope, ids, secrets
from latchkit.access_rules import Reason, decide
from latchkit.authz import may_unlock
from latchkit.errors import InvalidArgument, PermissionDenied, Unavailable
from latchkit.identity import Principal
from services.access.adapters.redis_cache import RedisUnlockCache, cred_key
from services.access.decisions import DecisionNotDurable, DecisionPublisher, wait_durable
from services.access.domain import DenialThrottle, ReplayMemory
from services.access.local_cache import MISS, LocalCache
from services.access.ports import CredentialRow, PairRow, UnlockView
from services.access.projector import Projector
from services.access.startup_floor import UNKNOWN as FLOOR_UNKNOWN
from services.access.startup_floor import StartupFloor

log = logging.getLogger("latchkey.access.unlock")
GRANTED, DENIED = ev.DECISION_GRANTED, ev.DECISION_DENIED
SECRET_LIMITS = {1: (4, 64), 2: (4, 12), 3: (16, 256)}


# Plain prometheus Counters: with several access workers, prometheus_client's multiprocess
# mode adds every worker's counts on the one metrics endpoint, which a custom collector
# (the per-process tally this replaced) cannot join. About a microsecond a call.
ANSWERED_FROM = Counter("latchkey_access_unlock_answered_from", "Where Unlock found the rules it decided on",
                        ["source"])
FROM_MEMORY, FROM_REDIS, FROM_VIEW = (ANSWERED_FROM.labels(s) for s in ("memory", "redis", "view"))
DECISIONS = Counter("latchkey_access_unlock_decisions", "Unlock answers by decision and reason",
                    ["decision", "reason"])


@functools.cache
def _decided(decision: int, reason: int):
    """The DECISIONS child for one (decision, reason): labels looked up once, not per call."""
    return DECISIONS.labels(ev.Decision.Name(decision).removeprefix("DECISION_"),
                            ev.DecisionReason.Name(reason).removeprefix("DECISION_REASON_"))
UNLOCK_DECIDED = envelope.PAYLOAD_TYPES["unlock_decided"]
REDIS_PAUSE_SECONDS = 1.0
"""After a failed Redis call, Unlock leaves Redis alone this long: a hung Redis costs one
call its socket timeout (0.25 s), not every call."""
REDIS_MIN_BUDGET_SECONDS = 0.01
"""Unlock asks Redis only with at least this much of its lookup budget left: a healthy Redis
answers in well under a millisecond, so running out of a larger budget means Redis is slow
(and pauses it); a smaller one is the caller's short deadline, not Redis' fault."""
ANSWER_MARGIN_SECONDS = 0.05
"""What Unlock keeps of the caller's deadline to send its answer: lookups (Redis, the view)
stop this long before it, and the answer is then a DENY with reason UNAVAILABLE, which
reaches the door (and the audit log) instead of a DEADLINE_EXCEEDED nobody records."""


DURABLE_WAIT_SECONDS = 5.0
"""How long Unlock waits for its decision to be durable when the call has no deadline (tests)."""


MIN_REVISION_RESERVE_SECONDS = 2 * ANSWER_MARGIN_SECONDS
"""What a `min_revision` wait leaves of the caller's deadline: time to record the decision
(durably, before answering) and to send the answer."""


def _never_shown() -> float | None:
    return None


def _lookups_deadline(time_remaining: float | None) -> float | None:
    """When Unlock's lookups must end (event loop time) to answer within the caller's deadline."""
    if time_remaining is None:
        return None
    return asyncio.get_running_loop().time() + max(time_remaining - ANSWER_MARGIN_SECONDS, 0.0)


def check_id(value: str, field: str) -> None:
    """An id field of Unlock: present, at most 64 printable characters (else INVALID_ARGUMENT naming it)."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 64 or not value.isprintable():
        raise InvalidArgument(field, "must be at most 64 printable characters")


class UnlockService:
    def __init__(self, view: UnlockView, cache: RedisUnlockCache, decisions: DecisionPublisher,
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
        self.decisions = decisions
        self.hasher = secrets.SecretHasher(hmac_key)
        self.projector = projector
        self.min_revision_wait = min_revision_wait
        self.credential_throttle = credential_throttle
        self.door_throttle = door_throttle
        self.replays = ReplayMemory()
        self._decoded: dict[tuple[str, str, int], object] = {}
        self._ids = ids.Sequence()
        self._background: set[asyncio.Task] = set()
        self._redis_paused_until = 0.0

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
    def _fire(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unlock(self, principal: Principal | None, request, time_remaining: float | None):
        # The hot path: fields are read once into locals (each protobuf attribute read is a call).
        started = time.perf_counter_ns()
        door_id, request_id = request.door_id, request.request_id
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
        if not may_unlock(principal, door_id):
            self._alarm(principal, "WRONG_DOOR_IDENTITY", door_id,
                        f"{principal.uri if principal else 'unknown'} asked to open door {door_id}")
            raise PermissionDenied(f"this certificate may not open door {door_id[:64]}")

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
        deadline = view_down = None
        if local is not None and local.answers_at(min_revision):
            # The per-process cache has applied everything the view has (and min_revision).
            revision = local.watermark
        else:
            local = None
            deadline = _lookups_deadline(time_remaining)
            try:
                async with asyncio.timeout_at(deadline):
                    revision = await self.applied_revision()
            except Exception as exc:  # noqa: BLE001 - the view is down (or too slow): deny, below
                log.error("unlock view unavailable", extra={"error": repr(exc)})
                view_down, revision = exc, 0
                if request.min_revision:
                    raise Unavailable("the view is unavailable; retry shortly") from exc
        stale = False
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
            except Exception as exc:  # noqa: BLE001 - the view failed while we waited
                raise Unavailable(f"the view is unavailable; min_revision {min_revision} cannot be shown, "
                                  "retry shortly") from exc
            stale = revision < min_revision

        # The two throttles are separate maps: a door id and a credential key never meet.
        cred_k = cred_key(kind, secret_hash) if secret_hash else ""
        earlier = None
        if view_down is not None:
            credential, user_id = None, request.user_id
            decision, reason = DENIED, Reason.UNAVAILABLE
        elif stale:
            credential, user_id = None, request.user_id
            decision, reason = DENIED, Reason.STALE_VIEW
        elif self.door_throttle.throttled(door_id) or (cred_k and self.credential_throttle.throttled(cred_k)):
            credential, user_id = None, request.user_id
            decision, reason = DENIED, Reason.RATE_LIMITED
        else:
            hit = self._decide_in_memory(local, request, cred_k) if local is not None else None
            if deadline is None:
                deadline = _lookups_deadline(time_remaining)
            earlier, decision, reason, credential, user_id = await self._decide(request, cred_k, secret_hash,
                                                                                 local, hit, deadline)
        if earlier is not None:
            self.replays.put(door_id, request_id, earlier)
            return access_pb2.UnlockResponse.FromString(earlier)

        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        decision_id = self._ids.next()
        response = access_pb2.UnlockResponse(decision=decision, reason=reason, decision_id=decision_id,
                                             view_revision=revision, user_id=user_id)
        server_time = response.server_time  # set in place: no Timestamp built and copied in
        server_time.seconds, server_time.nanos = seconds, nanos
        answer = response.SerializeToString()
        self.replays.put(door_id, request_id, answer)
        if decision == DENIED and reason not in (Reason.RATE_LIMITED, Reason.UNAVAILABLE, Reason.STALE_VIEW):
            if self.door_throttle.deny(door_id):
                self._alarm(principal, "DOOR_DENIALS_THROTTLED", door_id, "repeated denials at this door")
            if cred_k and self.credential_throttle.deny(cred_k):
                self._alarm(principal, "CREDENTIAL_DENIALS_THROTTLED", door_id,
                            "repeated denials of one credential", credential.credential_id if credential else "")
        durable = self._record(principal, request, door_id, request_id, decision_id, user_id, credential, decision,
                               reason, revision, seconds, nanos, time.perf_counter_ns() - started)
        if durable is not None:
            await self._durable(durable, time_remaining, started)
        # Only a durable answer is shared with the other processes (Redis) for retries.
        self._fire(self._remember(door_id, request_id, answer))
        return response

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
            await wait_durable(group, _lookups_deadline(remaining))
        except DecisionNotDurable as exc:
            raise Unavailable("the decision could not be recorded in time; retry shortly") from exc

    async def _remember(self, door_id: str, request_id: str, answer: bytes) -> None:
        if not self._redis_usable():
            return
        try:
            await self.cache.remember_answer(door_id, request_id, answer)
        except Exception as exc:  # noqa: BLE001 - the in-process memory still has it
            self._redis_failed(exc)

    async def _to_redis(self, write) -> None:
        """A background write to Redis (a fill): a failure pauses Redis use, it is not lost in a task."""
        try:
            await write
        except Exception as exc:  # noqa: BLE001 - a cache fill is best effort
            self._redis_failed(exc)

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_paused_until

    def _redis_in_time(self, deadline: float | None) -> bool:
        """Redis is not paused, and the lookups' budget leaves it time to answer."""
        if deadline is not None and deadline - asyncio.get_running_loop().time() < REDIS_MIN_BUDGET_SECONDS:
            return False
        return self._redis_usable()

    def _redis_failed(self, exc: Exception) -> None:
        if self._redis_usable():
            log.warning("redis call failed; unlock answers without it for a while",
                        extra={"error": repr(exc), "seconds": REDIS_PAUSE_SECONDS})
        self._redis_paused_until = time.monotonic() + REDIS_PAUSE_SECONDS

    def _decide_in_memory(self, local: LocalCache, request, cred_k: str):
        """(decision, reason, credential, user_id) from the per-process cache, or None on a miss."""
        credential, user_id = None, request.user_id
        if cred_k:
            credential = local.credential(cred_k)
            if credential is MISS:
                return None
            if credential is None:
                return DENIED, Reason.UNKNOWN_CREDENTIAL, None, ""
            user_id = credential.user_id
            if credential.revoked:
                return DENIED, Reason.CREDENTIAL_REVOKED, credential, user_id
        pair = local.pair(request.door_id, user_id)
        if pair is MISS:
            return None
        if pair is None or not pair.payload:
            return DENIED, Reason.NO_GRANT, credential, user_id
        decision, reason = self._verdict(pair)
        return decision, reason, credential, user_id

    async def _decide(self, request, cred_k: str, secret_hash: bytes, local: LocalCache | None, hit,
                      deadline: float | None):
        """(earlier answer, decision, reason, credential, user_id); `hit`: the per-process cache's answer.

        Its lookups (Redis, the view) end at `deadline` (event loop time; None: no limit).
        """
        door_id = request.door_id
        if local is not None:
            if hit is not None:
                if self._redis_in_time(deadline):
                    # Another process may have answered this request_id: its answer stands.
                    try:
                        async with asyncio.timeout_at(deadline):
                            earlier = await self.cache.earlier_answer(door_id, request.request_id)
                    except Exception as exc:  # noqa: BLE001 - best effort, as on the Redis path
                        self._redis_failed(exc)
                        earlier = None
                    if earlier is not None:
                        return earlier, None, None, None, ""
                FROM_MEMORY.inc()
                return None, *hit
        ticket = self.local.fill_ticket() if self.local is not None else None
        epoch = local.epoch if local is not None else 0
        credential: CredentialRow | None = None
        pair: PairRow | None = None
        user_id = request.user_id
        c = p = None
        redis_ok = False
        if self._redis_in_time(deadline):
            try:
                async with asyncio.timeout_at(deadline):
                    earlier, c, p = await self.cache.lookup(door_id, request.user_id, cred_k, request.request_id)
                if earlier is not None:
                    return earlier, None, None, None, ""
                redis_ok = True
            except Exception as exc:  # noqa: BLE001 - Redis down or hung: the view answers
                # A caller's deadline running out here pauses Redis too: were it not, a hung
                # Redis would take the whole budget of every call whose deadline is shorter
                # than its socket timeout, and the view would never get to answer them.
                self._redis_failed(exc)
        source = FROM_REDIS
        # In the cache's mode (`local`), what it does hold is newer than or as new as Redis
        # and the view, and the answer claims its revision: it overrides them.
        try:
            if cred_k:
                known = local.credential(cred_k) if local is not None else MISS
                if known is not MISS:
                    credential = known
                elif c is not None:
                    credential = (CredentialRow(c[1].decode(), c[2].decode(), request.credential.kind, secret_hash,
                                                c[3] == b"1", int(c[0])) if c[1] else None)
                else:
                    source = FROM_VIEW
                    async with asyncio.timeout_at(deadline):
                        credential = await self.view.get_credential(request.credential.kind, secret_hash)
                    if redis_ok:
                        self._fire(self._to_redis(self.cache.fill_credential(cred_k, credential)))
                if self.local is not None and known is MISS:
                    self.local.fill_credential(ticket, cred_k, credential)
                if credential is None:
                    source.inc()
                    return None, DENIED, Reason.UNKNOWN_CREDENTIAL, None, ""
                user_id = credential.user_id
                if credential.revoked:
                    source.inc()
                    return None, DENIED, Reason.CREDENTIAL_REVOKED, credential, user_id
            known = local.pair(door_id, user_id) if local is not None else MISS
            if known is not MISS:
                pair = known
            elif p is not None:
                pair = PairRow(door_id, user_id, int(p[0]), p[1] or b"")
            else:
                source = FROM_VIEW
                async with asyncio.timeout_at(deadline):
                    pair = await self.view.get_pair(door_id, user_id)
                if redis_ok:
                    self._fire(self._to_redis(self.cache.fill_pair(door_id, user_id, pair)))
            if self.local is not None and known is MISS:
                self.local.fill_pair(ticket, door_id, user_id, pair)
            source.inc()
        except Exception as exc:  # noqa: BLE001 - neither Redis nor the view (in time): deny
            log.error("unlock view unavailable", extra={"error": repr(exc)})
            return None, DENIED, Reason.UNAVAILABLE, credential, user_id
        if local is not None and local.epoch != epoch:
            # The cache was emptied while Redis answered (its feed stopped): what it held
            # and overrode is gone, so this answer cannot claim the cache's revision.
            return None, DENIED, Reason.UNAVAILABLE, credential, user_id
        if pair is None or not pair.payload:
            return None, DENIED, Reason.NO_GRANT, credential, user_id
        return None, *self._verdict(pair), credential, user_id

    def _verdict(self, pair: PairRow) -> tuple[int, Reason]:
        access = self._decode(pair)
        age = 0.0
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
    def _record(self, principal, request, door_id: str, request_id: str, decision_id: str, user_id: str, credential,
                decision: int, reason: int, revision: int, seconds: int, nanos: int, latency_ns: int):
        # One decision, one event: the decision id is also the event id. Only the values are
        # taken here (the ones Unlock holds, not read back from the request or the response);
        # the publisher encodes the envelope later, with others, off the response path.
        _decided(decision, reason).inc()
        controller = None
        if request.HasField("controller_time"):
            t = request.controller_time
            controller = (t.seconds, t.nanos)
        return self.decisions.record_deferred(decision_id, envelope.decision_subject(door_id), encode_decision, (
            decision_id, principal.uri if principal else "", door_id, user_id,
            credential.credential_id if credential is not None else "", request_id, int(decision),
            int(reason), revision, seconds, nanos, latency_ns, controller))

    def _alarm(self, principal, kind: str, door_id: str, detail: str, credential_id: str = "") -> None:
        alarm = ev.SecurityAlarm(kind=kind, door_id=door_id[:64], credential_id=credential_id, detail=detail[:200])
        self.decisions.record(envelope.build(alarm, actor=principal.uri if principal else "",
                                             aggregate_key=f"door/{door_id[:64]}"))


def encode_decision(decision_id: str, actor: str, door_id: str, user_id: str, credential_id: str, request_id: str,
                    decision: int, reason: int, revision: int, server_seconds: int, server_nanos: int,
                    latency_ns: int, controller: tuple[int, int] | None) -> bytes:
    """The serialized Envelope of one UnlockDecided (built in place: no nested copies).

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
    decided.decision = decision
    decided.reason = reason
    decided.view_revision = revision
    t = decided.server_time
    t.seconds, t.nanos = server_seconds, server_nanos
    t = decided.decision_latency
    t.seconds, t.nanos = divmod(latency_ns, 1_000_000_000)
    if controller is not None:
        t = decided.controller_time
        t.seconds, t.nanos = controller
    return env.SerializeToString()
