# One image for the three services, their migrations and tools.
# Build: docker build -t latchkey:dev .   Run: docker run latchkey:dev services.access
# Checked statically in CI (hadolint, make k8s-check); no Docker engine runs there.
#
# Python 3.11: the interpreter CI tests with (`make test`); uv.lock has a
# cp311 (or pure-Python) wheel for every package, so nothing is compiled.
# Both stages must use the same base: the virtual environment links to its
# interpreter by path (/usr/local/bin/python3.11).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
# Dependencies first (from the lock file only), so code changes reuse this layer.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
# README.md: pyproject names it as the readme, so building the project needs it.
COPY README.md ./
COPY latchkit ./latchkit
COPY access_rules ./access_rules
COPY ops ./ops
COPY services ./services
COPY protos ./protos
COPY scripts/proto.sh ./scripts/proto.sh
# scripts/proto.sh writes the stubs to /app/gen with /app/.venv's grpc_tools;
# installing the project (editable, pyproject's dev-mode-dirs) then puts /app
# and /app/gen on the venv's path. PYTHONPATH below says the same explicitly.
RUN scripts/proto.sh \
    && uv sync --frozen --no-dev \
    && test -f gen/latchkey/access/v1/access_pb2.py
# Bytecode for the project, written once here (UV_COMPILE_BYTECODE above does the
# same for the dependencies): at run time PYTHONDONTWRITEBYTECODE is set and /app
# is read-only, so without it every start, every restart after a crash included,
# compiled the project's sources again before serving. unchecked-hash: the .pyc is
# used without comparing the source's mtime; the code never changes in place.
RUN .venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash latchkit access_rules ops services gen

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="latchkey" \
      org.opencontainers.image.description="Latchkey access-control services: permissions, access, audit"
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LATCHKEY_STATE_DIR=/var/lib/latchkey
RUN groupadd --system --gid 10001 latchkey \
    && useradd --system --uid 10001 --gid latchkey --home-dir /nonexistent --shell /usr/sbin/nologin latchkey \
    && mkdir -p /var/lib/latchkey && chown latchkey:latchkey /var/lib/latchkey
WORKDIR /app
# Owned by root and read-only to the service user: the code cannot be rewritten at run time.
COPY --from=build --chown=root:root /app /app
USER 10001:10001
EXPOSE 7401 7402 7403 9401 9402 9403
# `python -m <module>`: services.permissions | services.access | services.audit.
# Migrations and tools use the console script instead: `latchkey migrate`,
# `latchkey access migrate-cql`, `latchkey audit migrate-cql`,
# `latchkey access rebuild-view`, `latchkey health --only <service>`.
ENTRYPOINT ["python", "-m"]
CMD ["services.permissions"]
