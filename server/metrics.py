"""Prometheus metrics, and the HTTP endpoint that serves them.

Labels are methods, status codes, roles, ESI levels, steps, backends and
outcomes: bounded sets, never patient content, and never a key id unless
TRIAGE_METRICS_BUDGET_PER_KEY asks for each key's budget. With several
worker processes, each writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (set by the supervisor before the workers start)
and the supervisor serves their sum, so the figures are the server's, not
one worker's; process metrics (memory, CPU, file descriptors), which the
files cannot carry, the supervisor reads from /proc for itself and each
worker at every scrape, labelled worker="supervisor", "0", "1", ...
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server import __version__
from triage.v1 import classification_pb2

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

BUILD_INFO = Gauge(
    "triage_build_info",
    "Always 1; the server's version and Python's as labels (what is deployed, per replica).",
    ["version", "python_version"],
    multiprocess_mode="livemax",
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

REQUESTS = Counter("triage_requests_total", "Calls answered, by method and status code.", ["method", "code"])
LATENCY = Histogram(
    "triage_request_duration_seconds",
    "Time from a call's arrival to its answer, by method.",
    ["method"],
    # 2.0 is the latency objective's bound (deploy/prometheus/triage.rules.yml): counted exactly, not interpolated.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_LIMITED = Counter("triage_rate_limited_total", "Calls refused by a rate limit, by role.", ["role"])
CLASSIFICATIONS = Counter("triage_classifications_total", "Classifications made, by ESI level.", ["esi_level"])
CACHE_LOOKUPS = Counter("triage_cache_lookups_total", "Response cache lookups, by result (hit or miss).", ["result"])
RATE_LIMIT_STORAGE_DEGRADED = Gauge(
    "triage_rate_limit_storage_degraded",
    "1 while the shared (Redis) rate-limit storage is unreachable and limits are counted per process.",
    multiprocess_mode="livemax",
)

# Model calls (server/pipeline/advice.py) and what they cost (interceptors/cost.py).
ModelOutcome = Literal[
    "ok", "invalid_answer", "timeout", "error", "circuit_open", "over_budget", "budget_unavailable", "refused_budget",
    "cancelled",
]  # fmt: skip
MODEL_CALLS = Counter(
    "triage_model_calls_total",
    "Model steps, by step, backend and outcome: ok; invalid_answer, timeout, error, circuit_open (not called), "
    "over_budget (not called), budget_unavailable (not called), each of which falls back to the rules' answer; "
    "refused_budget (the key refuses calls over its budget: the call failed); cancelled (by the caller).",
    ["step", "backend", "outcome"],
)
MODEL_LATENCY = Histogram(
    "triage_model_call_duration_seconds",
    "Time a model took to answer (retries included; a narrative to its last chunk), by step and backend.",
    ["step", "backend"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
MODEL_COST = Counter(
    "triage_model_cost_usd_total",
    "What model calls cost at the configured prices, by step and backend.",
    ["step", "backend"],
)
MODEL_TOKENS = Counter(
    "triage_model_tokens_total",
    "Tokens sent to (input) and received from (output) models, by step, backend and direction.",
    ["step", "backend", "direction"],
)

# Model budgets (server/budgets.py calls set_budget).
BUDGET_LIMIT = Gauge(
    "triage_budget_limit_usd",
    "This month's model budget, by scope (global, or key with key_id when TRIAGE_METRICS_BUDGET_PER_KEY is set).",
    ["scope", "key_id"],
    multiprocess_mode="livemostrecent",
)
BUDGET_REMAINING = Gauge(
    "triage_budget_remaining_usd",
    "What is left of this month's model budget (limit less spent and held), by scope and key_id.",
    ["scope", "key_id"],
    multiprocess_mode="livemostrecent",
)
_budget_per_key = False

# The audit log's group commit (server/store/audit.py).
AUDIT_COMMIT_LATENCY = Histogram(
    "triage_audit_commit_duration_seconds",
    "Time to write and commit one batch of audit records (successful commits).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AUDIT_BATCH_RECORDS = Histogram(
    "triage_audit_batch_records",
    "Audit records committed per transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
AUDIT_COMMIT_FAILURES = Counter(
    "triage_audit_commit_failures_total", "Batches of audit records that could not be committed (their calls failed)."
)
AUDIT_PENDING_RECORDS = Gauge(
    "triage_audit_pending_records",
    "Audit records waiting for a transaction (calls past TRIAGE_AUDIT_MAX_PENDING_RECORDS are refused).",
    multiprocess_mode="livesum",
)


def step_label(step: int) -> str:
    """A step's label: its name as the configuration writes it (high_risk, resources, narrative, ...)."""
    return classification_pb2.Step.Name(step).removeprefix("STEP_").lower()  # type: ignore[arg-type]


def model_called(step: int, backend: str, outcome: ModelOutcome, seconds: float | None = None) -> None:
    """Counts one model step by outcome; `seconds` is the model's time when it was called."""
    label = step_label(step)
    MODEL_CALLS.labels(label, backend, outcome).inc()
    if seconds is not None:
        MODEL_LATENCY.labels(label, backend).observe(seconds)


def model_used(step: int, backend: str, input_tokens: int, output_tokens: int, usd_micros: int) -> None:
    """Adds one model call's tokens and cost (a ledger entry)."""
    label = step_label(step)
    MODEL_COST.labels(label, backend).inc(usd_micros / 1_000_000)
    MODEL_TOKENS.labels(label, backend, "input").inc(input_tokens)
    MODEL_TOKENS.labels(label, backend, "output").inc(output_tokens)


def export_budget_per_key(enabled: bool) -> None:
    """Whether set_budget exports each key's budget too (a series per key with a budget: unbounded)."""
    global _budget_per_key
    _budget_per_key = enabled


def set_budget(key_id: str, limit_usd_micros: int, used_usd_micros: int) -> None:
    """Exports a budget's limit and remaining amount; key_id "" is the global budget (store.budgets.GLOBAL).

    Call it whenever a budget's counters are read or changed. A key's budget
    is exported only when configured (export_budget_per_key); a limit of 0
    (none) is not exported.
    """
    if limit_usd_micros <= 0 or (key_id and not _budget_per_key):
        return
    labels = ("key", key_id) if key_id else ("global", "")
    BUDGET_LIMIT.labels(*labels).set(limit_usd_micros / 1_000_000)
    BUDGET_REMAINING.labels(*labels).set((limit_usd_micros - used_usd_micros) / 1_000_000)


# Worker processes (server/workers.py): slot -> pid, in the supervisor.
_workers: dict[int, int] = {}


class WorkerProcesses(Collector):
    """process_* metrics of the supervisor and each live worker, labelled by worker slot (bounded)."""

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        processes = [("supervisor", os.getpid()), *((str(slot), pid) for slot, pid in sorted(_workers.items()))]
        for worker, pid in processes:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():  # type: ignore[misc]
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
        return merged.values()


def serve_metrics(host: str, port: int) -> int:
    """Serves /metrics on host:port (0: a free port) from a daemon thread; returns the port.

    In a worker supervisor (PROMETHEUS_MULTIPROC_DIR set) it serves the sum
    over all workers' files and every process's process_* metrics; otherwise
    this process's own metrics.
    """
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    registry = REGISTRY
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(WorkerProcesses())
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def worker_started(slot: int, pid: int) -> None:
    """The supervisor reports the process now serving as worker `slot`."""
    _workers[slot] = pid


def worker_exited(pid: int) -> None:
    """Drops a dead worker's live gauges from the multiprocess sum, and its process metrics."""
    for slot, known in list(_workers.items()):
        if known == pid:
            del _workers[slot]
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
