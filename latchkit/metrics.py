"""Prometheus metrics shared by all services, served over mTLS."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from latchkit.settings import TlsSettings

RPC_REQUESTS = Counter(
    "latchkey_grpc_requests", "gRPC requests handled, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "latchkey_grpc_request_seconds",
    "Server-side gRPC handling time, by method",
    ["method"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


def serve_metrics(host: str, port: int, tls: TlsSettings):
    """Start the /metrics endpoint; like the gRPC port it demands a client certificate."""
    if port <= 0:
        return None
    server, _thread = start_http_server(
        port,
        addr=host,
        certfile=str(tls.cert_file),
        keyfile=str(tls.key_file),
        client_cafile=str(tls.ca_file),
        client_auth_required=True,
    )
    return server
