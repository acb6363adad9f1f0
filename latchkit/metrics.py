"""Prometheus metrics shared by all services, served over mTLS.

The gRPC server metrics carry the names and labels of go-grpc-prometheus (and
py-grpc-prometheus), so off-the-shelf gRPC dashboards and alerts work as they
are: `grpc_server_started_total`, `grpc_server_handled_total` and the
`grpc_server_handling_seconds` histogram, by grpc_service, grpc_method and
grpc_type (unary, server_stream, client_stream, bidi_stream), plus grpc_code
once the call has ended. The histogram also has grpc_code, so the latency of
errors can be told from that of answers (dashboards that sum it away are not
affected).

With several processes on one port (the access workers) the endpoint adds up
every process's samples: see `latchkit.metrics_files`.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from latchkit import metrics_files
from latchkit.settings import TlsSettings

_CALL_LABELS = ["grpc_service", "grpc_method", "grpc_type"]
STARTED = Counter("grpc_server_started", "RPCs started on the server", _CALL_LABELS)
HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, whatever the outcome",
                  [*_CALL_LABELS, "grpc_code"])
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end on the server (a stream: until it closes)",
    [*_CALL_LABELS, "grpc_code"],
    # Unlock answers in well under a millisecond; an AuditLog follow stays open for hours.
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
             2.5, 5, 10, 30, 60, 300, 900, 3600, 3 * 3600, 12 * 3600),
)


def split_method(method: str) -> tuple[str, str]:
    """"/latchkey.access.v1.AccessService/Unlock" -> ("latchkey.access.v1.AccessService", "Unlock")."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def registry():
    """What the endpoint serves: this process's metrics, or in multiprocess mode all processes'."""
    if not metrics_files.enabled():
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


def serve_metrics(host: str, port: int, tls: TlsSettings):
    """Start the /metrics endpoint; like the gRPC port it demands a client certificate."""
    if port <= 0:
        return None
    server, _thread = start_http_server(
        port,
        addr=host,
        registry=registry(),
        certfile=str(tls.cert_file),
        keyfile=str(tls.key_file),
        client_cafile=str(tls.ca_file),
        client_auth_required=True,
    )
    return server
