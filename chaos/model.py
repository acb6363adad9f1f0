"""What the admin's acknowledged writes say each door should answer, and since when.

The load keeps a small copy of the permissions world (users, credentials,
groups, grants, lockdowns) and, after every write, records each (door,
subject) pair whose verdict changed. A pair that became allowed is dated
from the write's first attempt (it may have committed before its answer
came back); one that became denied from its acknowledgement, since the
revocation promise starts there. Schedules used by grants cover the whole
week, so a scheduled grant admits at any time like a plain one.
"""

from __future__ import annotations

import bisect
import collections
import threading
from dataclasses import dataclass, field


def user_key(user_id: str) -> str:
    return f"u:{user_id}"


def credential_key(credential_id: str) -> str:
    return f"c:{credential_id}"


@dataclass
class Grant:
    door_id: str
    user_id: str = ""
    group_id: str = ""
    active: bool = True


@dataclass
class World:
    doors: list[str]
    suspended: dict[str, bool] = field(default_factory=dict)
    credentials: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    """credential id -> (user id, secret, active)."""
    members: dict[str, set[str]] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    lockdown: dict[str, bool] = field(default_factory=dict)
    schedules: list[str] = field(default_factory=list)
    history: dict[tuple[str, str], list[tuple[float, bool, int]]] = field(default_factory=dict)
    """(door, subject) -> (time, allowed, revision of the write; 0 if unknown) at each change."""
    revoked: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    """(time, door id, subject key) of recent revocations: what a late grant would show on."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _verdicts(self) -> dict[tuple[str, str], bool]:
        direct: dict[str, set[str]] = {d: set() for d in self.doors}
        via_groups: dict[str, set[str]] = {d: set() for d in self.doors}
        for g in self.grants.values():
            if g.active and g.door_id in direct:
                (direct if g.user_id else via_groups)[g.door_id].add(g.user_id or g.group_id)
        users = {}
        for u, suspended in self.suspended.items():
            users[u] = {d: not suspended and not self.lockdown.get(d, False) and (
                u in direct[d] or any(u in self.members.get(g, ()) for g in via_groups[d])) for d in self.doors}
        verdicts = {(d, user_key(u)): v for u, by_door in users.items() for d, v in by_door.items()}
        for cid, (uid, _, active) in self.credentials.items():
            for d in self.doors:
                verdicts[(d, credential_key(cid))] = active and users.get(uid, {}).get(d, False)
        return verdicts

    def apply(self, change, *, first_attempt: float, acknowledged: float, revision: int = 0) -> None:
        """Run `change(world)` and date every verdict it flips."""
        with self.lock:
            before = self._verdicts()
            change(self)
            for pair, now in self._verdicts().items():
                if before.get(pair, False) != now:
                    self.history.setdefault(pair, []).append((first_attempt if now else acknowledged, now, revision))
                    if not now:
                        self.revoked.append((acknowledged, *pair))

    def subjects(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Users and (credential id, secret) pairs a door controller may present."""
        with self.lock:
            return list(self.suspended), [(c, s) for c, (_, s, _) in self.credentials.items()]

    def recently_revoked(self, door_id: str, since: float) -> list[str]:
        with self.lock:
            return [key for t, door, key in self.revoked if door == door_id and t >= since]

    def secret(self, credential_id: str) -> str:
        with self.lock:
            return self.credentials[credential_id][1]

    def granted_users(self, door_id: str) -> list[str]:
        with self.lock:
            return [g.user_id for g in self.grants.values() if g.active and g.door_id == door_id and g.user_id]


def denied_since(history: list[tuple[float, bool, int]], t: float) -> tuple[float, int] | None:
    """When the pair's current run of denial began, and by which revision, if it is denied at `t`
    (None: allowed then, or never was)."""
    entries = sorted(history)
    i = bisect.bisect_right(entries, t, key=lambda e: e[0])
    if i == 0 or entries[i - 1][1]:
        return None
    start = i - 1
    while start > 0 and not entries[start - 1][1]:
        start -= 1
    return entries[start][0], entries[start][2]


def promise_deadline(revoked_at: float, promise_s: float, outages: list[tuple[float, float]],
                     recovery_s: float | None = None) -> float:
    """When a revoke acknowledged at `revoked_at` must be honoured: `promise_s` later, or `recovery_s`
    (default `promise_s`) after the end of a bus outage that overlaps that span."""
    recovery_s = promise_s if recovery_s is None else recovery_s
    deadline = revoked_at + promise_s
    for start, end in sorted(outages):
        if start <= deadline and end >= revoked_at:
            deadline = max(deadline, end + recovery_s)
    return deadline
