"""A fail-closed door (`max_view_staleness`) stays shut while access cannot show its view is fresh.

Other doors go on answering from the last state through a broker outage (the
staleness promise); a door with the setting answers DENIED / STALE_VIEW once
the last proof that the view held the whole stream is older than its bound,
and opens again once the broker is back and the proof is renewed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import grpc
from google.protobuf import duration_pb2
from latchkey.access.v1 import access_pb2_grpc
from latchkey.events.v1 import events_pb2 as ev
from latchkey.permissions.v1 import permissions_pb2 as pm

from devstack.stack import free_port
from latchkit.settings import REPO_ROOT
from latchkit.tls import channel_credentials
from ops.run import health_of
from tests.e2e.helpers import Admin, Door, rid
from tests.e2e.test_access_workers import listeners

PROCESS_PREFIX = 24
"""A decision id's first characters are drawn once per process (services/access/ids.py): they tell who answered."""

BOUND_SECONDS = 1
WAIT_SECONDS = 15
"""How long the answer at the fail-closed door may take to flip (either way); it flips after the
bound (plus the proof's period and the broker's answer), well inside this on a loaded machine."""


def answers_until(ctl: Door, user_id: str, expected: tuple[int, int], *, also=None):
    """Ask until the answer is `expected` (decision, reason), and return it. `also` runs after each try."""
    started = time.monotonic()
    while True:
        answer = ctl.unlock(user_id=user_id)
        if also is not None:
            also()
        if (answer.decision, answer.reason) == expected:
            return answer
        assert time.monotonic() - started < WAIT_SECONDS, \
            f"still {(answer.decision, answer.reason)} at door {ctl.door_id}, not {expected}"
        time.sleep(0.1)  # the polling period of a bounded wait for the answer to flip


class OwnConnectionDoor(Door):
    """A controller on a TCP connection of its own: gRPC channels to one target otherwise share one,
    and every call would reach the same worker process."""

    def __init__(self, system, pki, door_id: str) -> None:
        super().__init__(system, pki, door_id)
        self.channel.close()
        self.channel = grpc.secure_channel(system.targets["access"], channel_credentials(pki.issue("door", door_id)),
                                           options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = access_pb2_grpc.AccessServiceStub(self.channel)


def fail_closed_door(admin):
    return admin.CreateDoor(pm.CreateDoorRequest(request_id=rid(), door=pm.Door(
        name="Vault", time_zone="UTC", max_view_staleness=duration_pb2.Duration(seconds=BOUND_SECONDS)))).door


def test_a_fail_closed_door_denies_while_the_broker_is_away_and_other_doors_do_not(system, pki, stack):
    # 1. One user, two doors: a vault that fails closed after 1 s, and a lobby as usual.
    admin = Admin(system, pki)
    user = admin.user()
    vault_door = fail_closed_door(admin)
    assert vault_door.max_view_staleness.seconds == BOUND_SECONDS
    lobby_door = admin.door()
    admin.grant(user.user_id, vault_door.door_id)
    granted = admin.grant(user.user_id, lobby_door.door_id)
    vault, lobby = Door(system, pki, vault_door.door_id), Door(system, pki, lobby_door.door_id)
    # 2. While everything runs, the user opens both.
    assert lobby.unlock(user_id=user.user_id, min_revision=granted.revision).decision == ev.DECISION_GRANTED
    answers_until(vault, user.user_id, (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED))

    def lobby_still_opens():
        answer = lobby.unlock(user_id=user.user_id)
        assert (answer.decision, answer.reason) == (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED), answer

    # 3. The broker goes away: access can no longer show its view holds the whole stream.
    stack.stop_component("nats")
    stopped = time.monotonic()
    try:
        # 4. Past the bound the vault denies, saying why, and the lobby keeps opening throughout.
        answers_until(vault, user.user_id, (ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW),
                      also=lobby_still_opens)
        assert time.monotonic() - stopped > BOUND_SECONDS * 0.5  # not before the last proof had aged
        stale = vault.unlock(user_id=user.user_id)
        assert (stale.decision, stale.reason) == (ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW)
        assert stale.view_revision >= granted.revision and stale.decision_id
    finally:
        stack.start_component("nats")
    # 5. The broker is back: the proof is renewed and the vault opens again, within the bound.
    answers_until(vault, user.user_id, (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED))
    lobby_still_opens()
    vault.close()
    lobby.close()
    admin.close()


def test_every_worker_process_reads_the_proof(system, pki, stack, tmp_path):
    # 1. A user may open a fail-closed vault.
    admin = Admin(system, pki)
    user, vault_door = admin.user(), fail_closed_door(admin)
    admin.grant(user.user_id, vault_door.door_id)
    # 2. An access instance of two processes: only the first projects and proves its view fresh.
    port = free_port()
    env = {**system.env, "LATCHKEY_ACCESS_WORKERS": "2", "LATCHKEY_ACCESS_PORT": str(port),
           "LATCHKEY_ACCESS_METRICS_PORT": str(free_port()), "LATCHKEY_STATE_DIR": str(tmp_path),
           "LATCHKEY_ACCESS_INSTANCE": f"fail-closed-{rid()[:8]}"}
    proc = subprocess.Popen([sys.executable, "-m", "services.access"], env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while health_of(f"localhost:{port}", timeout=0.5) != "SERVING" or listeners(port) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "two processes never listened"
            time.sleep(0.05)  # the polling period of a bounded wait for start-up
        # 3. Sixteen controllers, each on a connection of its own: the kernel spreads them over
        #    both processes (all on one: 1 in 32768). Every one of them opens the vault, and
        #    both processes answered.
        instance = SimpleNamespace(targets={**system.targets, "access": f"localhost:{port}"})
        controllers = [OwnConnectionDoor(instance, pki, vault_door.door_id) for _ in range(16)]
        answered_by = {answers_until(ctl, user.user_id, (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED))
                       .decision_id[:PROCESS_PREFIX] for ctl in controllers}
        assert len(answered_by) == 2, answered_by
        # 4. Without the broker, every process shuts it after the bound.
        stack.stop_component("nats")
        try:
            for ctl in controllers:
                answers_until(ctl, user.user_id, (ev.DECISION_DENIED, ev.DECISION_REASON_STALE_VIEW))
        finally:
            stack.start_component("nats")
        # 5. With the broker back, every process opens it again.
        for ctl in controllers:
            answers_until(ctl, user.user_id, (ev.DECISION_GRANTED, ev.DECISION_REASON_GRANTED))
            ctl.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        admin.close()
