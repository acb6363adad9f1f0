"""Random permission histories: the events, folded by version, and Unlock both agree with ExplainAccess.

`LATCHKEY_PROPERTY_EXAMPLES` sets the number of histories (default 8).
For each history and each (door, user) pair: Unlock at the final revision,
ExplainAccess at the instant Unlock decided, and the AccessChanged events
from JetStream folded by version and evaluated at that instant must agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import nats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm
from nats.js.api import ConsumerConfig, DeliverPolicy

from access_rules.codec import from_event
from access_rules.rules import evaluate
from latchkit import envelope
from latchkit.bus import PERMISSIONS_STREAM
from tests.e2e.helpers import Admin, Door

EXAMPLES = int(os.environ.get("LATCHKEY_PROPERTY_EXAMPLES", "8"))
VALIDITY = st.sampled_from(["none", "past", "future", "current"])
OPS = st.one_of(
    st.tuples(st.just("grant_user"), st.integers(0, 1), st.integers(0, 1), st.integers(-1, 1), VALIDITY),
    st.tuples(st.just("grant_group"), st.integers(0, 1), st.integers(-1, 1), VALIDITY),
    st.tuples(st.just("revoke"), st.integers(0, 20)),
    st.tuples(st.just("member"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("suspend"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("lockdown"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("schedule"), st.integers(0, 1), st.integers(0, 1439)),
)


def windows(start: int) -> list[ev.ScheduleWindow]:
    """Every day from `start` (minutes) to the end of the day: some histories straddle now."""
    return [ev.ScheduleWindow(day_of_week=d, start_minute=start, end_minute=1440) for d in range(1, 8)]


def validity(grant: pm.Grant, kind: str) -> None:
    now = dt.datetime.now(dt.UTC)
    year = dt.timedelta(days=365)
    if kind in ("past", "current"):
        grant.valid_from.FromDatetime(now - year)
    if kind == "past":
        grant.valid_until.FromDatetime(now - year / 2)
    if kind in ("future", "current"):
        grant.valid_until.FromDatetime(now + year)
    if kind == "future":
        grant.valid_from.FromDatetime(now + year / 2)


async def stream_tail(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(PERMISSIONS_STREAM)).state.last_seq
    finally:
        await nc.close()


async def folded_access(url: str, start_seq: int, pairs: set) -> dict:
    """AccessChanged for `pairs` in the stream after `start_seq`, highest version per pair.

    Called once the view has reached the final revision, so every event is
    already in the stream: reading until a fetch finds nothing drains it.
    """
    nc = await nats.connect(url)
    latest: dict = {}
    try:
        sub = await nc.jetstream().pull_subscribe(
            "latchkey.permissions.access_changed", stream=PERMISSIONS_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq + 1))
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1)
            except TimeoutError:
                break
            for msg in msgs:
                env = envelope.parse(msg.data)
                key = (env.access_changed.door_id, env.access_changed.user_id)
                if key in pairs and env.aggregate_version >= latest.get(key, (0, None))[0]:
                    latest[key] = (env.aggregate_version, env.access_changed)
                await msg.ack()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return {k: v[1] for k, v in latest.items()}


def test_events_and_unlock_agree_with_explain(system, pki, urls):
    admin = Admin(system, pki)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(OPS, min_size=1, max_size=12))
    def history(ops):
        start_seq = asyncio.run(stream_tail(urls.nats_url))
        users = [admin.user(f"u{i}") for i in range(2)]
        doors = [admin.door("Europe/Madrid"), admin.door("America/New_York")]
        group = admin.CreateGroup(pm.CreateGroupRequest(group=pm.Group(name=os.urandom(8).hex()))).group
        schedules = [admin.CreateSchedule(pm.CreateScheduleRequest(schedule=pm.Schedule(
            name="s", windows=windows(720)))).schedule for _ in range(2)]
        grants: list[str] = []
        revision = 0
        for op in ops:
            kind = op[0]
            if kind in ("grant_user", "grant_group"):
                if kind == "grant_user":
                    _, u, d, s, valid = op
                    grant = pm.Grant(user_id=users[u].user_id, door_id=doors[d].door_id)
                else:
                    _, d, s, valid = op
                    grant = pm.Grant(group_id=group.group_id, door_id=doors[d].door_id)
                if s >= 0:
                    grant.schedule_id = schedules[s].schedule_id
                validity(grant, valid)
                reply = admin.GrantAccess(pm.GrantAccessRequest(grant=grant))
                grants.append(reply.grant.grant_id)
            elif kind == "revoke":
                active = [g for g in grants if not admin.GetGrant(pm.GetGrantRequest(grant_id=g)).grant.revoked]
                if not active:
                    continue
                reply = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=active[op[1] % len(active)]))
            elif kind == "member":
                call = admin.AddGroupMember if op[2] else admin.RemoveGroupMember
                request = (pm.AddGroupMemberRequest if op[2] else pm.RemoveGroupMemberRequest)(
                    group_id=group.group_id, user_id=users[op[1]].user_id)
                try:
                    reply = call(request)
                except Exception:  # removing a non-member: NOT_FOUND, nothing changes
                    continue
            elif kind == "suspend":
                call = admin.SuspendUser if op[2] else admin.ReactivateUser
                request = (pm.SuspendUserRequest if op[2] else pm.ReactivateUserRequest)(user_id=users[op[1]].user_id)
                reply = call(request)
            elif kind == "lockdown":
                reply = admin.SetDoorLockdown(pm.SetDoorLockdownRequest(door_id=doors[op[1]].door_id,
                                                                        lockdown=op[2]))
            else:
                reply = admin.UpdateSchedule(pm.UpdateScheduleRequest(schedule=pm.Schedule(
                    schedule_id=schedules[op[1]].schedule_id, name="s", windows=windows(op[2]))))
            revision = max(revision, reply.revision)
        pairs = {(d.door_id, u.user_id) for d in doors for u in users}
        answers = {}
        for door in doors:
            ctl = Door(system, pki, door.door_id)
            try:
                for user in users:
                    answer = ctl.unlock(user_id=user.user_id, min_revision=revision)
                    request = pm.ExplainAccessRequest(user_id=user.user_id, door_id=door.door_id)
                    request.at.CopyFrom(answer.server_time)
                    oracle = admin.ExplainAccess(request)
                    assert (answer.decision, answer.reason) == (oracle.decision, oracle.reason), (ops, user, door)
                    answers[(door.door_id, user.user_id)] = (answer, oracle)
            finally:
                ctl.close()
        folded = asyncio.run(folded_access(urls.nats_url, start_seq, pairs))
        for (door_id, user_id), (answer, oracle) in answers.items():
            event = folded.get((door_id, user_id))
            verdict = evaluate(from_event(event) if event is not None else None,
                               answer.server_time.ToDatetime(tzinfo=dt.UTC))
            assert (verdict.granted, int(verdict.reason)) == (
                oracle.decision == ev.DECISION_GRANTED, oracle.reason), (ops, user_id, door_id)

    try:
        history()
    finally:
        admin.close()
