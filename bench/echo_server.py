"""The floors: a bare echo RPC and a bare server stream on the same runner, TLS and interceptor as the services."""

from __future__ import annotations

import os

import grpc

from latchkit import server
from latchkit.settings import ServerSettings, TlsSettings

ECHO = "/latchkey.bench.Echo/Echo"


def register(srv) -> list[str]:
    async def echo(request: bytes, context) -> bytes:
        return request

    async def stream(request: bytes, context):
        """The streaming floor: `count:size` -> count messages of size bytes."""
        count, size = (int(x) for x in request.decode().split(":"))
        payload = b"x" * size
        for _ in range(count):
            yield payload

    handler = grpc.method_handlers_generic_handler(
        "latchkey.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo),
                                "Stream": grpc.unary_stream_rpc_method_handler(stream)})
    srv.add_generic_rpc_handlers((handler,))
    return []


def floor_settings() -> ServerSettings:
    """What every bench server runs with: the access service's TLS identity, on BENCH_PORT."""
    assert os.environ["LATCHKEY_CERTS_DIR"]
    return ServerSettings(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), metrics_port=0,
                          grace_seconds=0.5, max_message_bytes=64 * 1024, tls=TlsSettings.for_identity("access"))


async def main() -> None:
    await server.serve_forever(floor_settings(), server.ServiceSpec(name="echo", register=register))


if __name__ == "__main__":
    server.run(main)
