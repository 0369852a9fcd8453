"""`make chaos`: each fault of issue 10, scripted, under ghz load, with a table of what callers saw.

One server of two workers (one worker for the server fault) on a private
PostgreSQL server, redis-server and a model server that decision point B is
routed to. For each fault: load (c=50, real cases, cache off) for
CHAOS_FAULT_SECONDS (default 30); the fault at a third of it, cleared at
two thirds (a killed process restarted as an orchestrator would, a stopped
one started, a hung one resumed); then how long until a call succeeds again.

A fault fails the run when an acknowledged classification is missing from the
audit, a caller gets a status other than OK, UNAVAILABLE, DEADLINE_EXCEEDED or
RESOURCE_EXHAUSTED, or the service does not recover within a minute. The
table is the figure; how long each fault costs is for issue 10's other fixes.
tests/e2e/test_chaos.py runs two faults, short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import stack
from bench.load import Load, ghz, table
from bench.stack import Backing, Replica
from triage.v1 import case_pb2
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT, BackendPrice
from triage_client import AsyncTriageClient, TriageError

ALLOWED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
RECOVERY_SECONDS = 60.0
BACKEND = f"{stack.MODEL_PROVIDER}:chaos"


@dataclass
class Rig:
    """The server under load and what it depends on."""

    backing: Backing
    server: Replica
    port: int
    # Process groups of supervisors killed without their workers: cleaned up after the fault.
    leftovers: list[int] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


Action = Callable[[Rig], Awaitable[str]]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Action
    clear: Action
    workers: int = 2
    needs_private_postgres: bool = False


async def _kill_server(rig: Rig) -> str:
    rig.server.kill()
    return "kill -9"


async def _restart(rig: Rig) -> str:
    await rig.server.start()
    return f"restarted; {stack.listeners(rig.port)} listening"


async def _kill_supervisor(rig: Rig) -> str:
    workers = rig.server.worker_pids()
    rig.server.kill()
    rig.leftovers.append(rig.server.pid)

    async def gone() -> bool:
        return not stack.living(workers)

    with contextlib.suppress(TimeoutError):
        await stack.eventually(gone, "workers gone", within_seconds=2)
    return f"kill -9 supervisor; {len(stack.living(workers))} of {len(workers)} workers alive 2 s later"


async def _kill_worker(rig: Rig) -> str:
    victim = rig.server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    return f"kill -9 worker {victim}"


async def _after_worker(rig: Rig) -> str:
    """As an orchestrator: a supervisor that exited is restarted; one that lives should replace its worker."""

    async def settled() -> bool:
        return not rig.server.alive() or len(rig.server.worker_pids()) == rig.server.workers

    with contextlib.suppress(TimeoutError):
        await stack.eventually(settled, "the supervisor", within_seconds=15)
    if not rig.server.alive():
        code = rig.server.process.returncode if rig.server.process else None
        await rig.server.start()
        return f"the supervisor had exited ({code}): restarted"
    workers = len(rig.server.worker_pids())
    return "the supervisor replaced the worker" if workers == rig.server.workers else f"{workers} workers left"


def _signal(component: str, action: str) -> Action:
    async def act(rig: Rig) -> str:
        backing = rig.backing
        child = {"redis": backing.redis, "model": backing.model}.get(component)
        match (component, action):
            case ("postgres", "stop"):
                await asyncio.to_thread(backing.postgres.shut_down)
            case ("postgres", "start"):
                await asyncio.to_thread(backing.postgres.start_again)
            case ("postgres", "pause"):
                backing.postgres.pause()
            case ("postgres", "resume"):
                backing.postgres.resume()
            case (_, "stop"):
                assert child is not None
                child.kill()
            case ("redis", "start"):
                assert child is not None
                await stack.start_redis(child)
            case ("model", "start"):
                assert child is not None
                await stack.start_model(child)
            case (_, "pause"):
                assert child is not None
                child.pause()
            case (_, "resume"):
                assert child is not None
                child.resume()
        return f"{component} {action}"

    return act


FAULTS = {
    "kill-server": Fault("kill-server", _kill_server, _restart, workers=1),
    "kill-supervisor": Fault("kill-supervisor", _kill_supervisor, _restart),
    "kill-worker": Fault("kill-worker", _kill_worker, _after_worker),
    "postgres-down": Fault(
        "postgres-down", _signal("postgres", "stop"), _signal("postgres", "start"), needs_private_postgres=True
    ),
    "postgres-hang": Fault(
        "postgres-hang", _signal("postgres", "pause"), _signal("postgres", "resume"), needs_private_postgres=True
    ),
    "redis-down": Fault("redis-down", _signal("redis", "stop"), _signal("redis", "start")),
    "redis-hang": Fault("redis-hang", _signal("redis", "pause"), _signal("redis", "resume")),
    "model-down": Fault("model-down", _signal("model", "stop"), _signal("model", "start")),
    "model-hang": Fault("model-hang", _signal("model", "pause"), _signal("model", "resume")),
}


@dataclass(frozen=True)
class Outcome:
    fault: str
    load: Load
    audited: int
    recovered_seconds: float | None
    rss_start_mb: list[float]
    rss_end_mb: list[float]
    notes: str

    @property
    def failures(self) -> list[str]:
        failed = []
        if unexpected := set(self.load.codes) - ALLOWED:
            failed.append(f"unexpected codes {sorted(unexpected)}")
        if self.audited < self.load.ok:
            failed.append(f"{self.load.ok - self.audited} acknowledged classifications not in the audit")
        if self.recovered_seconds is None:
            failed.append(f"no call succeeded within {RECOVERY_SECONDS:g} s of clearing the fault")
        return failed


def _rss(server: Replica) -> list[float]:
    return [round(stack.rss_mb(pid)) for pid in server.worker_pids()]


async def _recovery(rig: Rig, number: int) -> float | None:
    """Seconds from now until a Classify (a new case) succeeds; None if none does within the limit."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    case = case_pb2.TriageCase(chief_complaint="fall from standing, wrist pain", case_ref=f"probe-{number}")
    case.age.years = 20 + number % 70
    case.vitals.heart_rate_bpm = 70 + number % 50
    async with AsyncTriageClient(rig.target, api_key=rig.backing.keys["load"]) as client:
        while loop.time() - began < RECOVERY_SECONDS:
            with contextlib.suppress(TriageError):
                await client.classify(case, timeout=2)
                return round(loop.time() - began, 1)
            await asyncio.sleep(0.2)
    return None


async def _prepare(rig: Rig, fault: Fault) -> None:
    """The right server for the fault, serving, with B routed to the model."""
    if rig.server.workers != fault.workers or not rig.server.alive():
        await rig.server.stop()
        rig.server = rig.backing.replica("server", fault.workers, port=rig.port, TRIAGE_CACHE_TTL_SECONDS="0")
        await rig.server.start()


async def run_fault(rig: Rig, fault: Fault, seconds: float, number: int) -> Outcome:
    await _prepare(rig, fault)
    stack.progress(f"{fault.name}: load for {seconds:g} s")
    before = await asyncio.to_thread(rig.backing.audited)
    rss_start = _rss(rig.server)
    load = asyncio.create_task(ghz(rig.target, rig.backing.keys["load"], rig.backing.cases, seconds=seconds))
    await asyncio.sleep(seconds / 3)
    notes = [await fault.inject(rig)]
    await asyncio.sleep(seconds / 3)
    notes.append(await fault.clear(rig))
    recovered = await _recovery(rig, number)
    result = await load
    rss_end = _rss(rig.server)
    for group in rig.leftovers:  # orphaned workers, counted above; now gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    rig.leftovers.clear()
    # The probe's own classification is acknowledged too.
    audited = await asyncio.to_thread(rig.backing.audited) - before - (recovered is not None)
    outcome = Outcome(fault.name, result, audited, recovered, rss_start, rss_end, "; ".join(notes))
    stack.progress(f"{fault.name}: {result.codes_text()}, recovered in {recovered} s")
    return outcome


def report(outcomes: list[Outcome], seconds: float) -> str:
    rows = [
        [o.fault, o.load.calls, o.load.codes_text(), o.load.ok, o.audited, o.load.p50_ms, o.load.p99_ms,
         "-" if o.recovered_seconds is None else o.recovered_seconds,
         "/".join(f"{mb:.0f}" for mb in o.rss_start_mb) + " -> " + "/".join(f"{mb:.0f}" for mb in o.rss_end_mb)]
        for o in outcomes
    ]  # fmt: skip
    figures = table(
        ["fault", "calls", "codes", "acknowledged", "audited", "p50 ms", "p99 ms", "recovered s", "RSS MB/worker"],
        rows,
    )
    notes = "\n".join(f"  {o.fault}: {o.notes}" for o in outcomes)
    failures = "\n".join(f"  FAILED  {o.fault}: {f}" for o in outcomes for f in o.failures)
    return (
        f"chaos: each fault {seconds:g} s under ghz c=50 (fault at 1/3, cleared at 2/3), 1 server x 2 workers "
        f"(1 for kill-server), PostgreSQL, Redis, B routed to a model\n\n{figures}\n\n{notes}"
        + (f"\n\n{failures}" if failures else "")
    )


async def run(directory: Path, faults: list[str], *, seconds: float) -> list[Outcome]:
    chosen = [FAULTS[name] for name in faults]
    private = any(f.needs_private_postgres for f in chosen)
    async with stack.backing(directory, private_postgres=private) as backing:
        port = stack.free_port()
        rig = Rig(backing, backing.replica("server", chosen[0].workers, port=port, TRIAGE_CACHE_TTL_SECONDS="0"), port)
        await rig.server.start()
        try:
            async with AsyncTriageClient(rig.target, api_key=backing.keys["admin"]) as admin:
                price = BackendPrice(backend=BACKEND, input_usd_micros_per_million_tokens=1)
                await stack.route_to_model(admin, ("high_risk",), STRATEGY_MOST_URGENT, price=price)
            return [await run_fault(rig, fault, seconds, n) for n, fault in enumerate(chosen)]
        finally:
            await rig.server.stop()
            for group in rig.leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faults", nargs="*", help=f"any of {', '.join(FAULTS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("CHAOS_FAULT_SECONDS", "30")))
    args = parser.parse_args()
    if unknown := set(args.faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    directory = Path(tempfile.mkdtemp(prefix="triage-chaos-"))
    outcomes = asyncio.run(run(directory, args.faults or list(FAULTS), seconds=args.seconds))
    print(report(outcomes, args.seconds))
    if any(o.failures for o in outcomes):
        print(f"\nlogs kept in {directory}")
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
