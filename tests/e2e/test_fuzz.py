"""Every RPC of every service fed hostile input: a precise status, never INTERNAL, never a crash.

`LATCHKEY_FUZZ_EXAMPLES` sets the inputs per method (`make test`: 12,
`make fuzz`: 400). Each run prints how many inputs ran per status code.
"""

from __future__ import annotations

import collections
import os

import grpc
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from latchkey.access.v1 import access_pb2
from latchkey.audit.v1 import audit_pb2
from latchkey.permissions.v1 import permissions_pb2

from latchkit.tls import channel_credentials
from ops.run import health_of
from tests.fuzzing import messages

EXAMPLES = int(os.environ.get("LATCHKEY_FUZZ_EXAMPLES", "12"))
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED,
       grpc.StatusCode.DATA_LOSS}
SERVICES = {
    "permissions": (permissions_pb2, "PermissionsService"),
    "access": (access_pb2, "AccessService"),
    "audit": (audit_pb2, "AuditService"),
}
TALLY: collections.Counter = collections.Counter()


def _methods():
    for service, (module, name) in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            yield pytest.param(service, method, id=f"{service}.{method.name}")


def _identity(service: str, method: str) -> str:
    if service == "access" and method == "Unlock":
        return "door-fuzz"
    return "auditor" if service == "audit" else "admin"


@pytest.mark.parametrize(("service", "method"), list(_methods()))
def test_hostile_input_gets_a_precise_status(system, pki, service, method):
    identity = _identity(service, method.name)
    tls = pki.issue("door", "fuzz") if identity == "door-fuzz" else pki.tls(identity)
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = grpc.secure_channel(system.targets[service], channel_credentials(tls))
    streaming = method.server_streaming
    call = (channel.unary_stream if streaming else channel.unary_unary)(
        path, request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages(request_cls))
    def run(request):
        try:
            if streaming:
                # Read a little and hang up: follow mode may stream forever.
                for i, _ in enumerate(call(request, timeout=2)):
                    if i >= 5:
                        break
            else:
                call(request, timeout=5)
            TALLY[(path, "OK")] += 1
        except grpc.RpcError as exc:
            code = exc.code()
            TALLY[(path, code.name)] += 1
            if streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            assert code not in BAD, f"{path} answered {code.name}: {exc.details()}"

    try:
        run()
    finally:
        channel.close()
    assert health_of(system.targets[service]) == "SERVING"
    print({k[1]: v for k, v in TALLY.items() if k[0] == path})
