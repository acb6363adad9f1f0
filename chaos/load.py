"""The bounded mixed load: one admin writing every kind of change, door controllers asking Unlock.

Every answer and every acknowledged write is recorded with its times, for the
invariants. A write is retried (same request_id for creates, so the service
replays it) until it is acknowledged or `WRITE_GIVE_UP_S` passes: a fault
must not turn into a hole in the admin's own record.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from chaos.clients import Admin, Door
from chaos.model import Grant, World, credential_key, user_key
from tests.e2e.helpers import card, rid

WRITE_GIVE_UP_S = 60.0
ALREADY_DONE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
"""A retried revoke or removal that finds its work done: an earlier attempt committed."""
DONE = object()
"""`Writer.call`'s answer when a retry found its work done by an earlier attempt."""
MAX_USERS = 60
FULL_WEEK = [ev.ScheduleWindow(day_of_week=d, start_minute=0, end_minute=1440) for d in range(1, 8)]


def created(response) -> bool:
    return response is not None and response is not DONE


@dataclass
class Record:
    """What the clients saw; appended from several threads (list.append is atomic)."""
    acked: list[tuple[str, int, float]] = field(default_factory=list)
    """(operation, revision, time acknowledged); revision 0 = committed by an earlier attempt."""
    unknown_writes: list[str] = field(default_factory=list)
    refused_writes: dict[str, int] = field(default_factory=dict)
    answers: list[tuple[float, str, str, int, str, float, int]] = field(default_factory=list)
    """(time sent, door id, subject key, decision, decision id, seconds to the answer, view revision)."""
    unlock_errors: list[tuple[float, str]] = field(default_factory=list)
    """(time sent, status code) of Unlock calls that got no answer."""
    last_revision: int = 0

    def ack(self, op: str, revision: int) -> None:
        self.acked.append((op, revision, time.monotonic()))
        self.last_revision = max(self.last_revision, revision)


class Writer:
    """The admin: ~`rate` writes a second, each through `World.apply` once acknowledged."""

    def __init__(self, system, pki, world: World, record: Record, rate: float = 5.0, seed: int = 1) -> None:
        self.admin = Admin(system, pki)
        self.world, self.record, self.rate = world, record, rate
        self.rng = random.Random(seed)

    def call(self, op: str, method: str, request):
        """The acknowledged response, DONE, or None if the outcome stays unknown; raises on a refusal."""
        give_up = time.monotonic() + WRITE_GIVE_UP_S
        attempts = 0
        while True:
            try:
                response = getattr(self.admin, method)(request)
            except grpc.RpcError as exc:
                code = exc.code()
                if attempts and code in ALREADY_DONE:
                    self.record.ack(op, 0)
                    return DONE
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED):
                    raise
                attempts += 1
                if time.monotonic() > give_up:
                    self.record.unknown_writes.append(op)
                    return None
                time.sleep(0.2)
                continue
            self.record.ack(op, response.revision)
            return response

    def write(self, op: str, method: str, request, change, *, allows: bool = False) -> None:
        """One write; `change(world, response)` applies it to the model once known to hold."""
        first = time.monotonic()
        response = self.call(op, method, request)
        if response is None and not allows:
            return  # an unknown revoke is not counted on; an unknown grant is assumed to hold
        self.world.apply(lambda w: change(w, response), first_attempt=first, acknowledged=time.monotonic(),
                         revision=getattr(response, "revision", 0))

    # ---- the operations ------------------------------------------------------------------
    def create_user(self) -> None:
        r = self.call("CreateUser", "CreateUser", pm.CreateUserRequest(
            request_id=rid(), user=pm.User(display_name="chaos")))
        if created(r):
            self.world.apply(lambda w: w.suspended.__setitem__(r.user.user_id, False),
                             first_attempt=time.monotonic(), acknowledged=time.monotonic())
            self.issue_credential(r.user.user_id)

    def issue_credential(self, user_id: str) -> None:
        secret = f"chaos-{rid()}"
        self.write("IssueCredential", "IssueCredential", pm.IssueCredentialRequest(
            request_id=rid(), user_id=user_id, kind=ev.CREDENTIAL_KIND_CARD, secret=secret),
            lambda w, r: created(r) and w.credentials.__setitem__(r.credential.credential_id, (user_id, secret, True)),
            allows=True)

    def revoke_credential(self, cid: str) -> None:
        user_id, secret, _ = self.world.credentials[cid]
        self.write("RevokeCredential", "RevokeCredential", pm.RevokeCredentialRequest(credential_id=cid),
                   lambda w, r: w.credentials.__setitem__(cid, (user_id, secret, False)))

    def grant(self, door_id: str, user_id: str = "", group_id: str = "") -> None:
        schedule = self.rng.choice(self.world.schedules) if self.world.schedules and self.rng.random() < .3 else ""
        subject = {"user_id": user_id} if user_id else {"group_id": group_id}  # a oneof: set one field only
        self.write("GrantAccess", "GrantAccess", pm.GrantAccessRequest(request_id=rid(), grant=pm.Grant(
            **subject, door_id=door_id, schedule_id=schedule)),
            lambda w, r: created(r) and w.grants.__setitem__(r.grant.grant_id, Grant(door_id, user_id, group_id)),
            allows=True)

    def revoke(self, grant_id: str) -> None:
        self.write("RevokeAccess", "RevokeAccess", pm.RevokeAccessRequest(grant_id=grant_id),
                   lambda w, r: setattr(w.grants[grant_id], "active", False))

    def step(self) -> None:
        w, rng = self.world, self.rng
        users = list(w.suspended)
        active_grants = [g for g, v in w.grants.items() if v.active]
        choice = rng.choices(
            ["user", "door", "group", "member", "unmember", "schedule", "grant", "group_grant", "revoke",
             "lockdown", "suspend", "credential", "revoke_credential"],
            [3 if len(users) < MAX_USERS else 0, .3, .3, 1, .8, .3, 5, 1, 4, .8, 1.5, 1, 1])[0]
        if choice == "user" or not users:
            self.create_user()
        elif choice == "door":
            self.call("CreateDoor", "CreateDoor", pm.CreateDoorRequest(
                request_id=rid(), door=pm.Door(name="chaos", time_zone="UTC")))
        elif choice == "group" or not w.members:
            r = self.call("CreateGroup", "CreateGroup", pm.CreateGroupRequest(
                request_id=rid(), group=pm.Group(name=f"chaos-{rid()}")))
            if created(r):
                w.apply(lambda m: m.members.__setitem__(r.group.group_id, set()),
                        first_attempt=time.monotonic(), acknowledged=time.monotonic())
        elif choice == "member":
            gid, uid = rng.choice(list(w.members)), rng.choice(users)
            self.write("AddGroupMember", "AddGroupMember", pm.AddGroupMemberRequest(group_id=gid, user_id=uid),
                       lambda m, r: m.members[gid].add(uid), allows=True)
        elif choice == "unmember" and any(w.members.values()):
            gid = rng.choice([g for g, m in w.members.items() if m])
            uid = rng.choice(sorted(w.members[gid]))
            self.write("RemoveGroupMember", "RemoveGroupMember",
                       pm.RemoveGroupMemberRequest(group_id=gid, user_id=uid), lambda m, r: m.members[gid].discard(uid))
        elif choice == "schedule":
            r = self.call("CreateSchedule", "CreateSchedule", pm.CreateScheduleRequest(
                request_id=rid(), schedule=pm.Schedule(name=f"chaos-{rid()}", windows=FULL_WEEK)))
            if created(r):
                w.schedules.append(r.schedule.schedule_id)
        elif choice == "grant":
            self.grant(rng.choice(w.doors), user_id=rng.choice(users))
        elif choice == "group_grant":
            self.grant(rng.choice(w.doors), group_id=rng.choice(list(w.members)))
        elif choice == "revoke" and active_grants:
            self.revoke(rng.choice(active_grants))
        elif choice == "lockdown":
            door = rng.choice(w.doors)
            on = not w.lockdown.get(door, False)
            self.write("SetDoorLockdown", "SetDoorLockdown", pm.SetDoorLockdownRequest(door_id=door, lockdown=on),
                       lambda m, r: m.lockdown.__setitem__(door, on), allows=not on)
        elif choice == "suspend":
            uid = rng.choice(users)
            on = not w.suspended[uid]
            method, request = (("SuspendUser", pm.SuspendUserRequest(user_id=uid)) if on
                               else ("ReactivateUser", pm.ReactivateUserRequest(user_id=uid)))
            self.write(method, method, request, lambda m, r: m.suspended.__setitem__(uid, on), allows=not on)
        elif choice == "credential":
            self.issue_credential(rng.choice(users))
        elif choice == "revoke_credential":
            active = [c for c, (_, _, a) in w.credentials.items() if a]
            if active:
                self.revoke_credential(rng.choice(active))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except grpc.RpcError as exc:  # a refusal is the harness's mistake: counted, shown in the report
                name = f"{exc.code().name}: {exc.details()}"[:120]
                self.record.refused_writes[name] = self.record.refused_writes.get(name, 0) + 1
            stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        self.admin.close()


class Controller:
    """One door controller: ~`rate` Unlocks a second, by user or by card, some with min_revision."""

    def __init__(self, system, pki, door_id: str, world: World, record: Record, rate: float, seed: int) -> None:
        self.door = Door(system, pki, door_id)
        self.world, self.record, self.rate = world, record, rate
        self.rng = random.Random(seed)

    def pick(self) -> tuple[str, dict] | None:
        """Someone revoked here in the last 10 s (a quarter of the time), else a granted user or anyone."""
        revoked = self.world.recently_revoked(self.door.door_id, time.monotonic() - 10)
        if revoked and self.rng.random() < 0.25:
            key = self.rng.choice(revoked)
            kind, ident = key.split(":", 1)
            if kind == "c":
                return key, {"credential": card(self.world.secret(ident))}
            return key, {"user_id": ident}
        users, cards = self.world.subjects()
        if not users:
            return None
        if cards and self.rng.random() < 0.5:
            cid, secret = self.rng.choice(cards)
            return credential_key(cid), {"credential": card(secret)}
        granted = self.world.granted_users(self.door.door_id)
        uid = self.rng.choice(granted if granted and self.rng.random() < 0.6 else users)
        return user_key(uid), {"user_id": uid}

    def once(self) -> None:
        picked = self.pick()
        if picked is None:
            return
        key, subject = picked
        min_revision = self.record.last_revision if self.rng.random() < 0.2 else 0
        sent = time.monotonic()
        try:
            answer = self.door.unlock(**subject, min_revision=min_revision, timeout=3)
        except grpc.RpcError as exc:
            self.record.unlock_errors.append((sent, exc.code().name))
            return
        self.record.answers.append((sent, self.door.door_id, key, answer.decision, answer.decision_id,
                                    time.monotonic() - sent, answer.view_revision))

    def run(self, stop: threading.Event, lanes: int = 1) -> None:
        """One of `lanes` threads sharing this controller's channel (requests in flight at once)."""
        while not stop.is_set():
            started = time.monotonic()
            self.once()
            stop.wait(max(0.0, lanes / self.rate - (time.monotonic() - started)))
