"""Server reflection, v1 as well as v1alpha.

grpcio-reflection ships only `grpc.reflection.v1alpha`; current grpcurl and
buf ask for `grpc.reflection.v1` first. The v1 API is the v1alpha one renamed:
same messages, same field numbers, so the same servicer answers both, and v1
requests are read with the v1alpha message classes. So that reflection can
describe the v1 service too, its file descriptor (v1alpha's, renamed) is added
to the default descriptor pool.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = _V1_FILE, new
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old}."):
                field.type_name = f".{new}." + field.type_name[len(old) + 2:]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    pool.Add(proto)


def enable(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection (both versions) for `service_names`, health and reflection itself."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer((*service_names, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME))
    v1alpha = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, v1alpha),))
