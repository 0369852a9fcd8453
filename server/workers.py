"""Several server processes on one port (SO_REUSEPORT), supervised by a parent.

gRPC Python serves one core per process, so production runs one worker per
core (TRIAGE_WORKERS=0). The parent reserves the port first, so that port 0
resolves to one port shared by all workers; it forwards SIGTERM/SIGINT to the
workers, waits for their graceful shutdown, and exits non-zero if any worker
fails or dies unexpectedly (so the orchestrator restarts the pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType

from server import metrics
from server.app import serve
from server.config import Settings
from server.logs import configure_logging
from server.secret import load_server_secret

log = logging.getLogger("triage.workers")


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Holds host:port (port 0: a free one) with SO_REUSEPORT while the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _worker(settings: Settings) -> None:
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


def run(settings: Settings) -> int:
    """Serves with the configured number of workers until SIGTERM or SIGINT; the exit status."""
    count = worker_count(settings)
    if count == 1:
        asyncio.run(serve(settings))
        return 0
    # Create the secret once, before the workers race for it.
    load_server_secret(settings)
    context = multiprocessing.get_context("spawn")
    with (
        reserved_port(settings.host, settings.port) as port,
        tempfile.TemporaryDirectory(prefix="triage-metrics-") as metrics_directory,
    ):
        if settings.metrics_port is not None:
            # Workers write their samples to files; this process serves the sum.
            metrics.prepare_multiprocess(Path(metrics_directory))
            metrics_port = metrics.serve_metrics(settings.metrics_host, settings.metrics_port)
            log.info("metrics serving", extra={"fields": {"host": settings.metrics_host, "port": metrics_port}})
        shared = settings.model_copy(update={"port": port, "workers": 1, "metrics_port": None})
        workers = [context.Process(target=_worker, args=(shared,), name=f"worker-{i}") for i in range(count)]
        stopping = False
        unexpected = False

        def stop(signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            for worker in workers:
                if worker.pid is not None and worker.is_alive():
                    os.kill(worker.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for worker in workers:
            worker.start()
        log.info("workers started", extra={"fields": {"workers": count, "port": port}})
        while any(w.is_alive() for w in workers):
            # The timeout re-checks liveness even if a sentinel pipe never reports EOF.
            wait([w.sentinel for w in workers if w.is_alive()], timeout=1.0)
            if not stopping and any(w.exitcode is not None for w in workers):
                log.error(
                    "a worker exited unexpectedly; stopping the others",
                    extra={"fields": {"exit_codes": [w.exitcode for w in workers]}},
                )
                stop(signal.SIGTERM, None)
                stopping = True
                unexpected = True
        for worker in workers:
            worker.join()
            if worker.pid is not None:
                metrics.worker_exited(worker.pid)
    codes = [w.exitcode for w in workers]
    log.info("workers stopped", extra={"fields": {"exit_codes": codes}})
    return 0 if all(code == 0 for code in codes) and not unexpected else 1
