"""Several server processes on one port (SO_REUSEPORT), supervised by a parent.

gRPC Python serves one core per process, so production runs one worker per
CPU it may use (TRIAGE_WORKERS=0: the container's CPU limit, server/cpu_quota.py).
The parent reserves the port first, so that port 0 resolves to one port shared
by all workers; it forwards SIGTERM/SIGINT to the workers and waits for their
graceful shutdown. A worker that dies is logged and started again after a
backoff (and counts itself in
triage_worker_restarts_total); a worker whose supervisor dies, even by
SIGKILL, is killed by the kernel with it (PR_SET_PDEATHSIG): a supervisor
that dies is the whole server dying, as in a container whose first process
exits. Not a graceful drain: behind a proxy that mishandles the upstream's
GOAWAY (nginx) a drain turns calls into CANCELLED, which no client may
retry, where a dead connection is UNAVAILABLE, which every client retries;
nothing acknowledged is lost either way (the audit record is durable first).

Every process serving a port holds a shared lock on the port's lock file; a
server starting on the port first takes it exclusively, so it refuses to
start while anything of another server (an orphaned worker included) still
serves there, instead of binding beside it through SO_REUSEPORT. The kernel
drops a lock when its process dies, however it dies, so the lock never goes
stale; killing the old process group instead would need to know it, and
could kill a healthy server someone else started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from server import metrics
from server.app import serve
from server.config import Settings
from server.cpu_quota import available_cpus
from server.logs import configure_logging
from server.secret import load_secret_ring

log = logging.getLogger("triage.workers")

# The first restart of a worker waits this long; each quick death in a row doubles it.
FIRST_RESTART_DELAY_SECONDS = 0.5
# A worker that served this long before dying is restarted after the first delay again.
STABLE_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


class PortTaken(Exception):
    """Another triage server, or an orphaned worker of one, still serves the port."""


def worker_count(settings: Settings) -> int:
    """TRIAGE_WORKERS, or with 0 one per CPU the container's limit allows."""
    return settings.workers or available_cpus()


def lock_path(port: int) -> Path:
    """The lock file every process serving `port` holds (shared)."""
    directory = Path(tempfile.gettempdir()) / "triage-server-ports"
    try:
        directory.mkdir()
        directory.chmod(0o1777)  # shared by every user's servers, as /tmp is
    except FileExistsError:
        pass
    return directory / f"{port}.lock"


def _hold_shared(path: Path) -> int:
    """Takes a shared lock on `path` for as long as the returned descriptor stays open."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


@contextlib.contextmanager
def port_lock(port: int) -> Iterator[Path]:
    """Claims `port` for this server; raises PortTaken while any process of another server holds it."""
    path = lock_path(port)
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PortTaken(f"port {port} is served by another triage server (lock {path})") from None
        # Shared from now on, so that this server's workers can hold it too.
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield path
    finally:
        os.close(descriptor)


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


def die_with_parent(parent_pid: int) -> None:
    """Asks the kernel to kill this worker when the supervisor dies (Linux); exits if it is already gone."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before the request was made.
    if os.getppid() != parent_pid:
        sys.exit(1)


def _worker(settings: Settings, parent_pid: int, lock: Path, restart: bool) -> None:
    die_with_parent(parent_pid)
    _hold_shared(lock)  # until this process exits, however it exits
    configure_logging(settings.log_level)
    if restart:
        # Counted here: a worker's samples reach the metrics sum, the supervisor's own do not.
        metrics.WORKER_RESTARTS.inc()
    asyncio.run(serve(settings))


def run(settings: Settings) -> int:
    """Serves until SIGTERM or SIGINT; the exit status. Refuses a port another server still serves."""
    try:
        if worker_count(settings) == 1:
            with port_lock(settings.port) if settings.port else contextlib.nullcontext():
                asyncio.run(serve(settings))
            return 0
        return _supervise(settings)
    except PortTaken as error:
        log.error("not starting: port in use", extra={"fields": {"port": settings.port, "reason": str(error)}})
        return 1


def _supervise(settings: Settings) -> int:
    count = worker_count(settings)
    # Create the secret once, before the workers race for it.
    load_secret_ring(settings)
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as resources:
        if settings.port:
            resources.enter_context(port_lock(settings.port))
        port = resources.enter_context(reserved_port(settings.host, settings.port))
        lock = lock_path(port) if settings.port else resources.enter_context(port_lock(port))
        metrics_directory = resources.enter_context(tempfile.TemporaryDirectory(prefix="triage-metrics-"))
        if settings.metrics_port is not None:
            # Workers write their samples to files; this process serves the sum.
            metrics.prepare_multiprocess(Path(metrics_directory))
            metrics_port = metrics.serve_metrics(settings.metrics_host, settings.metrics_port)
            log.info("metrics serving", extra={"fields": {"host": settings.metrics_host, "port": metrics_port}})
        shared = settings.model_copy(update={"port": port, "workers": 1, "metrics_port": None})

        def start(slot: int, restart: bool) -> BaseProcess:
            worker = context.Process(target=_worker, args=(shared, os.getpid(), lock, restart), name=f"worker-{slot}")
            worker.start()
            if worker.pid is not None:
                metrics.worker_started(slot, worker.pid)
            return worker

        codes = _watch(count, port, start, settings.worker_restart_max_backoff_seconds)
    log.info("workers stopped", extra={"fields": {"exit_codes": codes}})
    return 0 if all(code == 0 for code in codes) else 1


def _watch(
    count: int, port: int, start: Callable[[int, bool], BaseProcess], max_backoff_seconds: float
) -> list[int | None]:
    """Starts the workers, restarts those that die until SIGTERM or SIGINT, then waits for all; their exit codes."""
    stopping = False
    workers: list[BaseProcess] = []

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers.extend(start(slot, False) for slot in range(count))
    if stopping:  # a signal while they were being started reached only some
        stop(signal.SIGTERM, None)
    log.info("workers started", extra={"fields": {"workers": count, "port": port}})
    started = [time.monotonic()] * len(workers)
    quick_deaths = [0] * len(workers)
    restart_at: list[float | None] = [None] * len(workers)
    while not stopping or any(w.is_alive() for w in workers):
        # The timeout re-checks liveness even if a sentinel pipe never reports EOF.
        wait(
            [w.sentinel for w in workers if w.is_alive()],
            timeout=0.1 if any(t is not None for t in restart_at) else 1.0,
        )
        if stopping:
            continue
        now = time.monotonic()
        for slot, worker in enumerate(workers):
            due = restart_at[slot]
            if due is None and worker.exitcode is not None:
                quick_deaths[slot] = 0 if now - started[slot] >= STABLE_SECONDS else quick_deaths[slot] + 1
                delay = min(FIRST_RESTART_DELAY_SECONDS * 2 ** max(quick_deaths[slot] - 1, 0), max_backoff_seconds)
                log.error(
                    "a worker died; restarting it",
                    extra={"fields": {"worker_pid": worker.pid, "exit_code": worker.exitcode, "after_seconds": delay}},
                )
                if worker.pid is not None:
                    metrics.worker_exited(worker.pid)
                restart_at[slot] = now + delay
            elif due is not None and now >= due:
                workers[slot] = start(slot, True)
                started[slot] = now
                restart_at[slot] = None
    for worker in workers:
        worker.join()
        if worker.pid is not None:
            metrics.worker_exited(worker.pid)
    return [worker.exitcode for worker in workers]
