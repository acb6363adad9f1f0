#!/usr/bin/env bash
# Generate Python (messages, .pyi stubs, gRPC stubs) from protos/ into gen/.
# One tree for every service, imported as latchkey.<area>.v1.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
include=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
rm -rf gen/latchkey
mkdir -p gen
mapfile -t protos < <(find protos -name '*.proto' | sort)
"$py" -m grpc_tools.protoc -Iprotos -I"$include" \
  --python_out=gen --pyi_out=gen --grpc_python_out=gen "${protos[@]}"
