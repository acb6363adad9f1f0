"""`latchkey permissions import` against a scripted permissions server on port 0: what it retries, with
which request_id, how long it waits, and how a refusal names the line."""

from __future__ import annotations

import time
import uuid
from concurrent import futures

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from latchkey.permissions.v1 import permissions_pb2 as pm
from latchkey.permissions.v1 import permissions_pb2_grpc

from services.permissions.bulk_import import ImportStopped, import_file, prepare, run

DOOR = "5f0c1d4e-8a7b-4c2d-9e1f-0a1b2c3d4e5f"


class ScriptedServer(permissions_pb2_grpc.PermissionsServiceServicer):
    """Answers the batch calls, each failing with the next status queued in `failures` (None: answers);
    notes every call."""

    def __init__(self) -> None:
        self.failures: list[tuple[grpc.StatusCode, str, float | None] | None] = []
        self.calls: list[tuple[str, str]] = []
        self.items: list[int] = []

    def _fail_if_scripted(self, context) -> None:
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            code, message, delay = failure
            if delay is not None:
                status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
                status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(nanos=int(delay * 1e9))))
                context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(code, message)

    def BatchCreateUsers(self, request, context):
        self.calls.append(("BatchCreateUsers", request.request_id))
        self.items.append(len(request.requests))
        self._fail_if_scripted(context)
        return pm.BatchCreateUsersResponse(users=[pm.User(user_id=str(uuid.uuid4()), external_id=r.user.external_id)
                                                  for r in request.requests], revision=len(self.calls))

    def BatchGrantAccess(self, request, context):
        self.calls.append(("BatchGrantAccess", request.request_id))
        self.items.append(len(request.requests))
        self._fail_if_scripted(context)
        return pm.BatchGrantAccessResponse(grants=[r.grant for r in request.requests], revision=len(self.calls))


def serve(max_receive: int = 64 * 1024):
    """A scripted server refusing requests over `max_receive` bytes, as the real one does."""
    scripted = ScriptedServer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                              options=[("grpc.max_receive_message_length", max_receive)])
    permissions_pb2_grpc.add_PermissionsServiceServicer_to_server(scripted, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield scripted, permissions_pb2_grpc.PermissionsServiceStub(channel)
    finally:
        channel.close()
        grpc_server.stop(None)


@pytest.fixture
def server():
    yield from serve()


@pytest.fixture
def small_server():
    yield from serve(max_receive=4096)


@pytest.fixture
def users_csv(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("external_id,display_name,door_ids\n" + "".join(f"e-{i},User {i},{DOOR}\n" for i in range(4)))
    return path


def test_an_overloaded_server_is_retried_after_its_retry_delay_with_the_same_request_id(server, users_csv):
    scripted, stub = server
    scripted.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", 0.4)]
    started = time.monotonic()
    summary = import_file(users_csv, stub, chunk_size=4)
    assert time.monotonic() - started >= 0.4
    first, retry, grants = scripted.calls
    assert first == retry and first[0] == "BatchCreateUsers" and grants[0] == "BatchGrantAccess"
    assert (summary.users_created, summary.grants_created) == (4, 4)


def test_an_unavailable_server_is_retried_with_backoff_until_it_answers(server, users_csv):
    scripted, stub = server
    scripted.failures = [(grpc.StatusCode.UNAVAILABLE, "down", None)] * 3
    import_file(users_csv, stub, chunk_size=4)
    assert len({rid for name, rid in scripted.calls if name == "BatchCreateUsers"}) == 1
    assert [name for name, _ in scripted.calls] == ["BatchCreateUsers"] * 4 + ["BatchGrantAccess"]


def test_a_call_the_server_cancelled_is_retried_with_the_same_request_id(server, users_csv):
    # What a service past capacity answers for calls its gRPC dropped before the service took them in.
    scripted, stub = server
    scripted.failures = [None, (grpc.StatusCode.CANCELLED, "Cancelled", None)]
    summary = import_file(users_csv, stub, chunk_size=4)
    users, grant, retry = scripted.calls
    assert users[0] == "BatchCreateUsers" and grant == retry and grant[0] == "BatchGrantAccess"
    assert (summary.users_created, summary.grants_created) == (4, 4)


def test_the_import_gives_up_after_its_attempts_and_records_nothing(server, users_csv):
    scripted, stub = server
    scripted.failures = [(grpc.StatusCode.UNAVAILABLE, "down", None)] * 2
    plan = prepare(users_csv, chunk_size=4)
    with pytest.raises(ImportStopped, match="UNAVAILABLE") as stopped:
        run(plan, stub, attempts=2)
    assert stopped.value.code == grpc.StatusCode.UNAVAILABLE and not plan.state_file.exists()


def test_request_ids_are_the_same_on_a_rerun_and_differ_between_chunks_and_steps(server, users_csv):
    scripted, stub = server
    import_file(users_csv, stub, chunk_size=2)
    first = list(scripted.calls)
    import_file(users_csv, stub, chunk_size=2, restart=True)
    assert scripted.calls[len(first):] == first
    assert len({rid for _, rid in first}) == 4 and all(len(rid) <= 64 for _, rid in first)


def test_a_refused_item_is_named_by_its_line(server, users_csv):
    scripted, stub = server
    scripted.failures = [None, (grpc.StatusCode.NOT_FOUND, "requests[1].grant.door_id: no such door", None)]
    with pytest.raises(ImportStopped) as stopped:
        import_file(users_csv, stub, chunk_size=4)
    assert str(stopped.value).startswith(f"chunk 1 (lines 2-5), line 3 (door {DOOR}): NOT_FOUND")
    assert "this chunk is partly written (a rerun replays that part); a rerun resumes with this chunk" in \
        str(stopped.value)


def test_an_existing_external_id_is_named_by_its_line_even_without_an_index(server, users_csv):
    scripted, stub = server
    scripted.failures = [None, None, (grpc.StatusCode.ALREADY_EXISTS, "a user with external_id 'e-3' already exists",
                                      None)]
    plan = prepare(users_csv, chunk_size=2)
    with pytest.raises(ImportStopped) as stopped:
        run(plan, stub)
    assert str(stopped.value).startswith("chunk 2 (lines 4-5), line 5 (external_id 'e-3'): ALREADY_EXISTS")
    assert "nothing of this chunk was written" in str(stopped.value)
    assert list(prepare(users_csv, chunk_size=2).done) == [0]


def test_a_chunk_over_the_servers_message_limit_goes_in_several_batches(small_server, tmp_path):
    scripted, stub = small_server
    source = tmp_path / "users.jsonl"
    source.write_text("".join(f'{{"external_id": "e-{i}", "display_name": "{"n" * 150}", "door_ids": ["{DOOR}"]}}\n'
                              for i in range(40)))
    summary = run(prepare(source, chunk_size=40), stub, max_message_bytes=4096)
    assert (summary.users_created, summary.grants_created) == (40, 40)
    users = [n for (name, _), n in zip(scripted.calls, scripted.items, strict=True) if name == "BatchCreateUsers"]
    grants = [n for (name, _), n in zip(scripted.calls, scripted.items, strict=True) if name == "BatchGrantAccess"]
    assert len(users) > 1 and sum(users) == 40 and sum(grants) == 40
    assert len({rid for _, rid in scripted.calls}) == len(scripted.calls)


def test_a_request_over_the_servers_limit_is_not_retried(small_server, tmp_path):
    scripted, stub = small_server
    source = tmp_path / "users.jsonl"
    source.write_text("".join(f'{{"external_id": "e-{i}", "display_name": "{"n" * 150}"}}\n' for i in range(40)))
    with pytest.raises(ImportStopped) as stopped:
        run(prepare(source, chunk_size=40), stub, max_message_bytes=64 * 1024)
    assert "RESOURCE_EXHAUSTED: " in str(stopped.value) and "MAX_MESSAGE_BYTES" in str(stopped.value)
    assert scripted.calls == []
