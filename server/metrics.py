"""Prometheus metrics, and the HTTP endpoint that serves them.

Labels are methods, status codes, roles and ESI levels: never a key id (an
unbounded label set) and never patient content. With several worker
processes, each writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set
by the supervisor before the workers start) and the supervisor serves their
sum, so the figures are the server's, not one worker's.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("triage_requests_total", "Calls answered, by method and status code.", ["method", "code"])
LATENCY = Histogram(
    "triage_request_duration_seconds",
    "Time from a call's arrival to its answer, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_LIMITED = Counter("triage_rate_limited_total", "Calls refused by a rate limit, by role.", ["role"])
CLASSIFICATIONS = Counter("triage_classifications_total", "Classifications made, by ESI level.", ["esi_level"])
CACHE_LOOKUPS = Counter("triage_cache_lookups_total", "Response cache lookups, by result (hit or miss).", ["result"])
RATE_LIMIT_STORAGE_DEGRADED = Gauge(
    "triage_rate_limit_storage_degraded",
    "1 while the shared (Redis) rate-limit storage is unreachable and limits are counted per process.",
    multiprocess_mode="livemax",
)


def serve_metrics(host: str, port: int) -> int:
    """Serves /metrics on host:port (0: a free port) from a daemon thread; returns the port.

    In a worker supervisor (PROMETHEUS_MULTIPROC_DIR set) it serves the sum
    over all workers' files; otherwise this process's own metrics.
    """
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    registry = REGISTRY
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def worker_exited(pid: int) -> None:
    """Drops a dead worker's live gauges from the multiprocess sum."""
    if os.environ.get(MULTIPROCESS_DIRECTORY):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def prepare_multiprocess(directory: Path) -> None:
    """Points this process and the workers it will spawn at one empty metrics directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIRECTORY] = str(directory)


# Circuit breakers (server/breaker.py).
DEPENDENCY_CIRCUIT_OPEN = Gauge(
    "triage_dependency_circuit_open",
    "1 while a dependency's circuit is open (calls skip it and take their fallback), 0 while closed; by dependency "
    "(redis_cache, redis_rate_limit, or a model backend's name).",
    ["dependency"],
    multiprocess_mode="livemax",
)
DEPENDENCY_CIRCUIT_OPENED = Counter(
    "triage_dependency_circuit_opened_total", "Times a dependency's circuit opened, by dependency.", ["dependency"]
)

OVERLOAD_REFUSED = Counter(
    "triage_overload_refused_total",
    "Calls refused with UNAVAILABLE because the process had max_in_flight_calls in flight, by method.",
    ["method"],
)
WORKER_RESTARTS = Counter(
    "triage_worker_restarts_total", "Worker processes that died unexpectedly and were started again."
)
AUDIT_STORE_UNAVAILABLE = Gauge(
    "triage_audit_store_unavailable",
    "1 while audit records cannot be committed (Classify and Explain report NOT_SERVING).",
    multiprocess_mode="livemax",
)
