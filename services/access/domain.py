"""Access-side rules with no I/O: the denial throttle, the request-id replay memory, cache keys."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field


def cred_key(kind: int, secret_hash: bytes) -> str:
    """The key of a credential in the unlock caches (Redis and the per-process one)."""
    return f"{kind}:{secret_hash.hex()}"


@dataclass
class DenialThrottle:
    """Counts DENIED answers per key in a sliding window; past `limit` the key is throttled.

    `tripped` returns True exactly once per window per key, so one burst raises
    one alarm, not one per attempt.
    """

    window_seconds: float
    limit: int
    _hits: dict[str, collections.deque[float]] = field(default_factory=dict)
    _alarmed: dict[str, float] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = collections.deque()
        while hits and hits[0] <= now - self.window_seconds:
            hits.popleft()
        return hits

    def throttled(self, key: str, now: float | None = None) -> bool:
        if key not in self._hits:  # the common case: no recent denial, no clock read
            return False
        return len(self._recent(key, time.monotonic() if now is None else now)) >= self.limit

    def deny(self, key: str, now: float | None = None) -> bool:
        """Record a denial; True if this denial crossed the limit (raise an alarm)."""
        now = time.monotonic() if now is None else now
        hits = self._recent(key, now)
        hits.append(now)
        if len(hits) > self.limit * 2:
            hits.popleft()
        if len(hits) >= self.limit and now - self._alarmed.get(key, -1e18) >= self.window_seconds:
            self._alarmed[key] = now
            return True
        if len(self._hits) > 100_000:
            self._hits.pop(next(iter(self._hits)))
        return False


class ReplayMemory:
    """The last answers by (door, request_id): a retried request gets the same decision."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()

    def get(self, door_id: str, request_id: str) -> bytes | None:
        return self._items.get((door_id, request_id))

    def put(self, door_id: str, request_id: str, response: bytes) -> None:
        self._items[(door_id, request_id)] = response
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
