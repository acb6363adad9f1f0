"""A restarted access process never answers from a state older than what the bus held when it started.

Found by `make chaos`: an access process killed while revokes were acknowledged
came back and let revoked people in for seconds, answering from its old view
while its projector caught up (services/access/startup_floor.py).
"""

from __future__ import annotations

from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from tests.e2e.helpers import Admin, Door, wait_for_view


def granted_pair(system, pki):
    admin = Admin(system, pki)
    user, door = admin.user(), admin.door()
    grant = admin.grant(user.user_id, door.door_id)
    ctl = Door(system, pki, door.door_id)
    assert ctl.unlock(user_id=user.user_id, min_revision=grant.revision).decision == ev.DECISION_GRANTED
    wait_for_view(system, pki, grant.revision)
    return admin, user, grant, ctl


def test_a_restart_honours_revokes_acknowledged_while_access_was_down(system, pki):
    # 1. A user can open a door, and the view knows it.
    admin, user, grant, ctl = granted_pair(system, pki)
    # 2. Access crashes; while it is down the grant is revoked (acknowledged).
    system.kill("access")
    revoked = admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=grant.grant.grant_id))
    # 3. Access comes back: from its very first answer on, the revoke holds.
    system.start("access")
    answers = [ctl.unlock(user_id=user.user_id) for _ in range(20)]
    assert all(a.decision == ev.DECISION_DENIED for a in answers), \
        [(a.decision, a.reason, a.view_revision) for a in answers]
    # 4. Once its view has caught up, it says why: no grant (no longer "stale").
    wait_for_view(system, pki, revoked.revision)
    final = ctl.unlock(user_id=user.user_id, min_revision=revoked.revision)
    assert (final.decision, final.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_NO_GRANT)
    ctl.close()
    admin.close()


def test_a_restart_while_the_bus_is_down_denies_until_it_can_tell(system, pki, stack):
    # 1. A user can open a door, and the view knows it.
    admin, user, grant, ctl = granted_pair(system, pki)
    # 2. Access crashes, the broker goes down, and the grant is revoked: the revoke is
    #    acknowledged (it waits in the outbox), but nothing can tell access about it.
    system.kill("access")
    stack.stop_component("nats")
    try:
        admin.RevokeAccess(pm.RevokeAccessRequest(grant_id=grant.grant.grant_id))
        # 3. Access comes back without the bus: it cannot show its view is current, so it denies.
        system.start("access")
        answer = ctl.unlock(user_id=user.user_id)
        assert (answer.decision, answer.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW), answer
    finally:
        stack.start_component("nats")
    ctl.close()
    admin.close()
