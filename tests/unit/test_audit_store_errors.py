"""The CQL audit store's outages reach gRPC clients as UNAVAILABLE (retry), never as UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from cassandra import ConsistencyLevel, OperationTimedOut, ReadTimeout, WriteTimeout
from cassandra import Unavailable as ReplicasUnavailable
from cassandra.cluster import NoHostAvailable
from latchkey.audit.v1 import audit_pb2

from latchkit.errors import Unavailable
from services.audit.adapters.scylla_store import unavailable_on_driver_errors
from services.audit.grpc_api import AuditServicer

DRIVER_ERRORS = [
    ReplicasUnavailable("not enough replicas", ConsistencyLevel.LOCAL_QUORUM, 2, 1),
    ReadTimeout("read timed out", consistency=ConsistencyLevel.LOCAL_QUORUM, required_responses=2,
                received_responses=1, data_retrieved=False),
    WriteTimeout("write timed out", consistency=ConsistencyLevel.LOCAL_QUORUM, required_responses=2,
                 received_responses=1, write_type=0),
    OperationTimedOut(errors={"10.0.0.1": "timeout"}, last_host="10.0.0.1"),
    NoHostAvailable("no host", {"10.0.0.1": ConnectionRefusedError()}),
]


@pytest.mark.parametrize("error", DRIVER_ERRORS, ids=lambda e: type(e).__name__)
def test_driver_outages_become_unavailable(error):
    with pytest.raises(Unavailable) as caught, unavailable_on_driver_errors():
        raise error
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.__cause__ is error


def test_other_errors_are_not_disguised_as_outages():
    with pytest.raises(KeyError), unavailable_on_driver_errors():
        raise KeyError("a bug stays a bug")


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code = None

    async def abort(self, code, message, trailing_metadata=()):
        self.code = code
        raise Aborted(message)


class DownStore:
    """A store whose every read meets a cluster that does not answer (through the adapter's mapping)."""

    async def last_seq(self) -> int:
        return 0

    def _down(self):
        with unavailable_on_driver_errors():
            raise DRIVER_ERRORS[1]

    async def read(self, query, after_seq, limit):
        self._down()

    async def verify(self, start_us, end_us):
        self._down()


async def test_audit_log_answers_unavailable_when_the_store_is_down():
    context = FakeContext()
    with pytest.raises(Aborted):
        async for _ in AuditServicer(DownStore(), None).AuditLog(audit_pb2.AuditLogRequest(), context):
            pass
    assert context.code == grpc.StatusCode.UNAVAILABLE


async def test_verify_chain_answers_unavailable_when_the_store_is_down():
    context = FakeContext()
    with pytest.raises(Aborted):
        await AuditServicer(DownStore(), None).VerifyChain(audit_pb2.VerifyChainRequest(), context)
    assert context.code == grpc.StatusCode.UNAVAILABLE
