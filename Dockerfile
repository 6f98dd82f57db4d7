# syntax=docker/dockerfile:1
# chatplane in a container: one image for every role (serve, worker, db upgrade, backup).
#
#   docker build -t chatplane .
#   docker run -p 8000:8000 -v chatplane-data:/data chatplane            # embedded shape
#   docker compose -f deploy/compose/compose.yaml up -d                  # scaled shape
#
# Build arguments: PYTHON_IMAGE (the base of both stages) and PG_MAJOR (the PostgreSQL client
# for `chatplane backup` / `restore`: pg_dump must be the server's major version or newer).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers and pip live here only -----------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/chatplane
WORKDIR /src
# Dependencies first (their layer survives source edits), pinned by the same lock as CI.
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN /opt/chatplane/bin/pip install -c requirements.lock . \
    && /opt/chatplane/bin/python -m compileall -q /opt/chatplane/lib

# --- runtime: the venv, the PostgreSQL client, no compilers ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PG_MAJOR=16
# The PostgreSQL project's apt repository (its key ships in postgresql-common) carries every
# supported client version; Debian's own is one version only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 chatplane \
    && useradd --system --uid 10001 --gid chatplane --home-dir /data --shell /usr/sbin/nologin chatplane \
    && mkdir -p /data /backups \
    && chown chatplane:chatplane /data /backups
COPY --from=builder /opt/chatplane /opt/chatplane
ENV PATH="/opt/chatplane/bin:/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHATPLANE_DATA_DIR=/data \
    CHATPLANE_HOST=0.0.0.0 \
    CHATPLANE_PORT=8000 \
    CHATPLANE_LOG_JSON=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# Liveness of `serve` (the worker overrides it: compose and Kubernetes probe its /metrics).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CHATPLANE_PORT', '8000') + '/healthz', timeout=4)"
# SIGTERM drains (docs/operations.md): give the container CHATPLANE_DRAIN_TIMEOUT_S + 10 s
# before it is killed (`docker stop -t 35`, compose `stop_grace_period`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatplane"]
CMD ["serve", "--host", "0.0.0.0"]
