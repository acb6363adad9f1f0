# One image for the three services, their migrations and tools.
# Build: docker build -t latchkey:dev .   Run: docker run latchkey:dev services.access
# Checked statically in CI (hadolint); no Docker engine runs there.

FROM python:3.11.11-slim-bookworm AS build
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_NO_CACHE_DIR=1
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
# Dependencies first (from the lock file only), so code changes reuse this layer.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY latchkit ./latchkit
COPY services ./services
COPY protos ./protos
COPY scripts/proto.sh ./scripts/proto.sh
RUN scripts/proto.sh && uv sync --frozen --no-dev

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="latchkey" \
      org.opencontainers.image.description="Latchkey access-control services: permissions, access, audit"
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LATCHKEY_STATE_DIR=/var/lib/latchkey
RUN groupadd --system --gid 10001 latchkey \
    && useradd --system --uid 10001 --gid latchkey --home-dir /nonexistent --shell /usr/sbin/nologin latchkey \
    && mkdir -p /var/lib/latchkey && chown latchkey:latchkey /var/lib/latchkey
WORKDIR /app
COPY --from=build --chown=root:root /app /app
USER 10001:10001
EXPOSE 7401 7402 7403 9401 9402 9403
ENTRYPOINT ["python", "-m"]
CMD ["services.permissions"]
