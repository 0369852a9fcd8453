# syntax=docker/dockerfile:1
# The triage server image. Two stages: the build stage installs into a virtual environment
# that the runtime stage copies, so pip's caches and the sources stay behind. It runs as the
# numeric UID 10001 (Kubernetes can verify runAsNonRoot only for a numeric user) and writes
# only to /data (a volume: the SQLite database and the generated secret when no PostgreSQL
# and no TRIAGE_SECRET_KEY are given) and /tmp (worker port locks, multi-worker metrics), so
# it runs with a read-only root filesystem when both are mounted writable.
#
#   docker build -t triage-server .
#   docker run --rm -v triage-data:/data triage-server triage-server migrate   # first, and after every upgrade
#   docker run --rm -v triage-data:/data triage-server triage-server keys create --name ops --role admin
#   docker run -d -v triage-data:/data -p 50051:50051 triage-server
# The same image runs the web tier (clients/web), a client of the server, as its own container:
#   docker run -d -p 8080:8080 -e TRIAGE_TARGET=server:50051 -e TRIAGE_WEB_HOST=0.0.0.0 \
#     -e TRIAGE_WEB_API_KEY=<gateway key> -e TRIAGE_WEB_SESSION_SECRET=<secret> triage-server triage-web
# deploy/k8s (Kubernetes) and deploy/compose (a laptop or one VM) run it with PostgreSQL and Redis.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/triage
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY clients/python clients/python
COPY clients/web clients/web
COPY server server
COPY interceptors interceptors
RUN /opt/triage/bin/pip install -c constraints.txt ./clients/python ./clients/web .

FROM ${PYTHON_IMAGE}
# postgresql-client: pg_dump and pg_restore for `triage-server backup` and `restore` on PostgreSQL
# (Debian trixie's are PostgreSQL 17's, which dump and restore servers up to 17).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 triage \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin triage \
    && install -d -o 10001 -g 10001 -m 0700 /data
COPY --from=build /opt/triage /opt/triage

# TRIAGE_WORKERS=0: one worker per CPU of the container's CPU limit (its cgroup quota), not the node's cores.
# Metrics are served on port 9090 but, as everywhere, bound to 127.0.0.1 unless TRIAGE_METRICS_HOST says
# otherwise: the endpoint has no authentication, so exposing it is the deployment's choice, made where the
# network around it is known (deploy/k8s and deploy/compose set TRIAGE_METRICS_HOST=0.0.0.0 behind a
# NetworkPolicy or a private network). gRPC itself listens on every address, as a container must.
ENV PATH=/opt/triage/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRIAGE_HOST=0.0.0.0 \
    TRIAGE_PORT=50051 \
    TRIAGE_WORKERS=0 \
    TRIAGE_DATABASE_URL=sqlite:////data/triage.db \
    TRIAGE_SECRET_KEY_FILE=/data/triage-secret.key \
    TRIAGE_METRICS_PORT=9090

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9090

# grpc.health.v1 for the whole server: NOT_SERVING while audit records cannot be committed, or while
# draining. Plaintext: with TRIAGE_TLS_CERT set, override it (or rely on the orchestrator's probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD triage --target "127.0.0.1:${TRIAGE_PORT}" --timeout 3 health || exit 1

CMD ["triage-server", "serve"]
