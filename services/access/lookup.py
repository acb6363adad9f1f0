"""Where Unlock finds its rules: the per-process cache, then Redis, then the view.

The order, and what each step may do:

1. The per-process cache (local_cache.py), when it may answer at its revision:
   a hit costs no I/O but one Redis GET of the request id (another process may
   have answered this retry already: its answer stands).
2. Redis (`UnlockCache.lookup`): the earlier answer, the credential and the
   pair in one round trip. Whatever the per-process cache does hold overrides
   it (it is newer or as new); what Redis gives fills the per-process cache.
3. The view, for what Redis did not have: it fills Redis (in the background,
   set-if-newer) and the per-process cache.

A failed or timed-out Redis call pauses Redis for `REDIS_PAUSE_SECONDS`: a hung
Redis costs one call its socket timeout, not every call. All lookups end at
the call's lookup deadline (the caller's deadline less `ANSWER_MARGIN_SECONDS`);
neither Redis nor the view answering in time is a DENY with reason UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from latchkey.events.v1 import events_pb2 as ev
from prometheus_client import Counter

from access_rules.rules import Reason
from services.access.local_cache import MISS, LocalCache
from services.access.ports import CACHE_MISS, CredentialRow, PairRow, UnlockCache, UnlockView

log = logging.getLogger("latchkey.access.unlock")
GRANTED, DENIED = ev.DECISION_GRANTED, ev.DECISION_DENIED

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

# Plain prometheus Counters: with several access workers, prometheus_client's multiprocess
# mode adds every worker's counts on the one metrics endpoint, which a custom collector
# (the per-process tally this replaced) cannot join.
ANSWERED_FROM = Counter("latchkey_access_unlock_answered_from", "Where Unlock found the rules it decided on",
                        ["source"])
FROM_MEMORY, FROM_REDIS, FROM_VIEW = (ANSWERED_FROM.labels(s) for s in ("memory", "redis", "view"))


@dataclass(frozen=True, slots=True)
class Decision:
    """What Unlock decided, for whom, and with which credential (None: none presented or known)."""

    decision: ev.Decision
    reason: Reason
    user_id: str
    credential: CredentialRow | None = None


def lookups_deadline(time_remaining: float | None) -> float | None:
    """When Unlock's lookups must end (event loop time) to answer within the caller's deadline."""
    if time_remaining is None:
        return None
    return asyncio.get_running_loop().time() + max(time_remaining - ANSWER_MARGIN_SECONDS, 0.0)


class UnlockLookup:
    """The lookup chain of one process, with its Redis pause and its background Redis writes.

    `verdict` turns a pair with rules into (decision, reason); `local` is the per-process
    cache (None: turned off).
    """

    def __init__(self, view: UnlockView, cache: UnlockCache, local: LocalCache | None,
                 verdict: Callable[[PairRow], tuple[ev.Decision, Reason]]) -> None:
        self.view = view
        self.cache = cache
        self.local = local
        self.verdict = verdict
        self._redis_paused_until = 0.0
        self._background: set[asyncio.Task] = set()

    # ---- Redis: its pause and its background writes ------------------------------------
    def redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_paused_until

    def redis_in_time(self, deadline: float | None) -> bool:
        """Redis is not paused, and the lookups' budget leaves it time to answer."""
        if deadline is not None and deadline - asyncio.get_running_loop().time() < REDIS_MIN_BUDGET_SECONDS:
            return False
        return self.redis_usable()

    def redis_failed(self, exc: Exception) -> None:
        if self.redis_usable():
            log.warning("redis call failed; unlock answers without it for a while",
                        extra={"error": repr(exc), "seconds": REDIS_PAUSE_SECONDS})
        self._redis_paused_until = time.monotonic() + REDIS_PAUSE_SECONDS

    def remember(self, door_id: str, request_id: str, answer: bytes) -> None:
        """Share a durable answer with the other processes (for retries), in the background."""
        if self.redis_usable():
            self._fire(self.cache.remember_answer(door_id, request_id, answer))

    def _fire(self, write: Awaitable[None]) -> None:
        task = asyncio.create_task(self._to_redis(write))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _to_redis(self, write: Awaitable[None]) -> None:
        """A background write to Redis: a failure pauses Redis use, it is not lost in a task."""
        try:
            await write
        except Exception as exc:  # any failure: the write is best effort, the view and memory still have it
            self.redis_failed(exc)

    async def settled(self) -> None:
        """Return once the background Redis writes started so far have ended."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ---- the chain ---------------------------------------------------------------------
    def in_memory(self, local: LocalCache, door_id: str, user_id: str, cred_k: str) -> Decision | None:
        """The decision from the per-process cache alone, or None on a miss."""
        credential: CredentialRow | None = None
        if cred_k:
            held = local.credential(cred_k)
            if held is MISS:
                return None
            credential = held
            if credential is None:
                return Decision(DENIED, Reason.UNKNOWN_CREDENTIAL, "")
            user_id = credential.user_id
            if credential.revoked:
                return Decision(DENIED, Reason.CREDENTIAL_REVOKED, user_id, credential)
        pair = local.pair(door_id, user_id)
        if pair is MISS:
            return None
        if pair is None or not pair.payload:
            return Decision(DENIED, Reason.NO_GRANT, user_id, credential)
        decision, reason = self.verdict(pair)
        return Decision(decision, reason, user_id, credential)

    async def decide(self, request, cred_k: str, secret_hash: bytes, local: LocalCache | None,
                     hit: Decision | None, deadline: float | None) -> Decision | bytes:
        """The decision, or the earlier answer (bytes) to this request id from another process.

        `local`: the per-process cache when it may answer at its revision, `hit` its answer.
        The lookups end at `deadline` (event loop time; None: no limit).
        """
        door_id, request_id = request.door_id, request.request_id
        if hit is not None:
            if self.redis_in_time(deadline):
                try:
                    async with asyncio.timeout_at(deadline):
                        earlier = await self.cache.earlier_answer(door_id, request_id)
                except Exception as exc:  # any failure: best effort, as on the Redis path
                    self.redis_failed(exc)
                    earlier = None
                if earlier is not None:
                    return earlier
            FROM_MEMORY.inc()
            return hit
        # A fill is kept by the per-process cache even when it may not answer (yet).
        filling = self.local
        ticket = filling.fill_ticket() if filling is not None else None
        epoch = local.epoch if local is not None else 0
        user_id = request.user_id
        found, redis_ok = CACHE_MISS, False
        if self.redis_in_time(deadline):
            try:
                async with asyncio.timeout_at(deadline):
                    found = await self.cache.lookup(door_id, user_id, cred_k, request_id)
                if found.earlier is not None:
                    return found.earlier
                redis_ok = True
            except Exception as exc:  # Redis down or hung, whatever the error: the view answers
                # A caller's deadline running out here pauses Redis too: were it not, a hung
                # Redis would take the whole budget of every call whose deadline is shorter
                # than its socket timeout, and the view would never get to answer them.
                self.redis_failed(exc)
        credential: CredentialRow | None = None
        source = FROM_REDIS
        # In the cache's mode (`local`), what it does hold is newer than or as new as Redis
        # and the view, and the answer claims its revision: it overrides them.
        try:
            if cred_k:
                known = local.credential(cred_k) if local is not None else MISS
                if known is not MISS:
                    credential = known
                elif (cached := found.credential) is not None:
                    credential = (CredentialRow(cached.credential_id, cached.user_id, request.credential.kind,
                                                secret_hash, cached.revoked, cached.version)
                                  if cached.credential_id else None)
                else:
                    source = FROM_VIEW
                    async with asyncio.timeout_at(deadline):
                        credential = await self.view.get_credential(request.credential.kind, secret_hash)
                    if redis_ok:
                        self._fire(self.cache.fill_credential(cred_k, credential))
                if filling is not None and known is MISS:
                    filling.fill_credential(ticket, cred_k, credential)
                if credential is None:
                    source.inc()
                    return Decision(DENIED, Reason.UNKNOWN_CREDENTIAL, "")
                user_id = credential.user_id
                if credential.revoked:
                    source.inc()
                    return Decision(DENIED, Reason.CREDENTIAL_REVOKED, user_id, credential)
            known_pair = local.pair(door_id, user_id) if local is not None else MISS
            pair: PairRow | None
            if known_pair is not MISS:
                pair = known_pair
            elif (cached_pair := found.pair) is not None:
                pair = PairRow(door_id, user_id, cached_pair.version, cached_pair.payload)
            else:
                source = FROM_VIEW
                async with asyncio.timeout_at(deadline):
                    pair = await self.view.get_pair(door_id, user_id)
                if redis_ok:
                    self._fire(self.cache.fill_pair(door_id, user_id, pair))
            if filling is not None and known_pair is MISS:
                filling.fill_pair(ticket, door_id, user_id, pair)
            source.inc()
        except Exception as exc:  # neither Redis nor the view answered in time, whatever the error: deny
            log.error("unlock view unavailable", extra={"error": repr(exc)})
            return Decision(DENIED, Reason.UNAVAILABLE, user_id, credential)
        if local is not None and local.epoch != epoch:
            # The cache was emptied while Redis answered (its feed stopped): what it held
            # and overrode is gone, so this answer cannot claim the cache's revision.
            return Decision(DENIED, Reason.UNAVAILABLE, user_id, credential)
        if pair is None or not pair.payload:
            return Decision(DENIED, Reason.NO_GRANT, user_id, credential)
        decision, reason = self.verdict(pair)
        return Decision(decision, reason, user_id, credential)
