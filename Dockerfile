# The triage server: one worker per core on 0.0.0.0:50051.
FROM python:3.11-slim

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY clients/python clients/python
COPY server server
COPY interceptors interceptors
RUN pip install --no-cache-dir -c constraints.txt ./clients/python . \
    && useradd --system --home /data triage && mkdir -p /data && chown triage /data

USER triage
WORKDIR /data
ENV TRIAGE_HOST=0.0.0.0 \
    TRIAGE_PORT=50051 \
    TRIAGE_WORKERS=0 \
    TRIAGE_DATABASE_URL=sqlite:////data/triage.db \
    TRIAGE_METRICS_HOST=0.0.0.0 \
    TRIAGE_METRICS_PORT=9090
EXPOSE 50051 9090
# Kubernetes: use a gRPC probe on port 50051 (grpc.health.v1.Health); scrape :9090/metrics.
# Before the first start and after every upgrade (back up first), migrate the schema:
#   docker run --rm -v DATA:/data IMAGE triage-server migrate
# The first key: docker run --rm -v DATA:/data IMAGE triage-server keys create --name ops --role admin
CMD ["triage-server", "serve"]
