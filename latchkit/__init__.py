"""Code shared by the Latchkey services and tools."""

import os

# gRPC's C core writes its own log lines (a failed TLS handshake, at INFO) as plain text to
# stderr, in the middle of the services' JSON lines. It reads this when grpc is first imported,
# and every service and tool imports latchkit before grpc: only errors, unless the operator
# asks for more (GRPC_VERBOSITY=INFO or DEBUG).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
