#!/usr/bin/env bash
# buf lint on the contract, with buf pinned in tools/buf/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x tools/buf/node_modules/.bin/buf ]; then
  npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
fi
tools/buf/node_modules/.bin/buf lint
