"""`make topology`: 2 replicas x 2 workers behind nginx, sharing PostgreSQL and Redis, one killed under load.

The topology production runs, on real components: nginx (grpc_pass, HTTP/2)
in front of two `triage-server serve` replicas of two workers each, one
PostgreSQL database, one redis-server (rate limits and cache) and a model
server. It checks, and prints, what callers are promised:

- per-key rate limits hold exactly across replicas (Redis);
- kill -9 of a replica under ghz load: callers see only UNAVAILABLE (retryable),
  the typed client's retries succeed, every acknowledged classification is in
  the audit, and the restarted replica serves again;
- the global model budget holds across replicas: spend <= budget + one call's
  worst-case reservation (--no-budget or TOPOLOGY_BUDGET=0 leaves it out).

tests/e2e/test_topology.py runs a shorter version of the same in `make test`.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench import stack
from bench.load import Load, ghz, table
from bench.stack import Backing, Replica
from server.calls import Role
from triage.v1 import case_pb2
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT, BackendPrice
from triage_client import AsyncTriageClient, ResourceExhausted, TriageError

BACKEND = f"{stack.MODEL_PROVIDER}:budget"
# Only output tokens are priced, so a call's worst case is exactly price x most output tokens;
# the model answers with 30 (tests/fake_llm.py), so a call costs 3,000 and reserves 4,000.
OUTPUT_USD_MICROS_PER_MILLION = 100_000_000
MODEL_MAX_OUTPUT_TOKENS = 40
WORST_CALL_USD_MICROS = OUTPUT_USD_MICROS_PER_MILLION * MODEL_MAX_OUTPUT_TOKENS // 1_000_000
BUDGET_USD_MICROS = 100_000


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Topology:
    """The running components; `target` is nginx."""

    backing: Backing
    replicas: list[Replica]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def keys(self) -> dict[str, str]:
        return self.backing.keys

    def key_id(self, name: str) -> str:
        return self.keys[name][4:30]


@contextlib.asynccontextmanager
async def running(directory: Path, *, replicas: int = 2, workers: int = 2) -> AsyncIterator[Topology]:
    """Starts the backing services, the replicas and nginx in front; stops them after."""
    async with stack.backing(
        directory,
        model_delay_seconds=0.2,
        keys={"limited": (Role.SERVICE, "40/minute")},
        TRIAGE_MODEL_MAX_OUTPUT_TOKENS=str(MODEL_MAX_OUTPUT_TOKENS),
    ) as backing:
        members = [backing.replica(f"replica-{i}", workers) for i in range(replicas)]
        port = stack.free_port()
        front = stack.nginx(directory, port, [r.port for r in members])
        try:
            stack.progress("starting the replicas")
            await asyncio.gather(*(r.start() for r in members))
            await stack.start_nginx(front, port)
            stack.progress("nginx serving")
            yield Topology(backing, members, port)
        finally:
            for child in [front, *members]:
                await child.stop()


def _case(number: int) -> case_pb2.TriageCase:
    """A different case for each of 144,000 numbers (age, heart and breathing rates vary): no cache serves it."""
    case = case_pb2.TriageCase(chief_complaint="chest pain radiating to the left arm", case_ref=f"typed-{number}")
    case.age.years = 18 + number % 80
    case.vitals.heart_rate_bpm = 60 + number // 80 % 90
    case.vitals.respiratory_rate_per_min = 12 + number // 7_200 % 20
    return case


async def rate_limit_across_replicas(topology: Topology) -> list[Check]:
    """160 calls at once on a key limited to 40 a minute, spread over every worker by nginx."""
    async with AsyncTriageClient(topology.target, api_key=topology.keys["limited"]) as client:
        outcomes = await asyncio.gather(*(client.classify(_case(n)) for n in range(160)), return_exceptions=True)
    accepted = sum(1 for o in outcomes if not isinstance(o, BaseException))
    refused = sum(1 for o in outcomes if isinstance(o, ResourceExhausted))
    key_id = topology.key_id("limited")
    served_by = [r.name for r in topology.replicas if any(e.get("key_id") == key_id for e in r.log())]
    return [
        Check("per-key limit exact across replicas", accepted == 40 and refused == 120,
              f"40/minute key, 160 calls: {accepted} accepted, {refused} RESOURCE_EXHAUSTED"),
        Check("nginx spread the calls over the replicas", len(served_by) == len(topology.replicas),
              f"served by {', '.join(served_by) or 'none'}"),
    ]  # fmt: skip


async def _typed_callers(topology: Topology, stop: asyncio.Event, callers: int = 8) -> tuple[list[str], list[str]]:
    """Callers using the typed client (its retries) until `stop`; the ids acknowledged and the errors seen."""
    acknowledged: list[str] = []
    errors: list[str] = []
    async with AsyncTriageClient(topology.target, api_key=topology.keys["load"]) as client:

        async def caller(first: int) -> None:
            number = first
            while not stop.is_set():
                try:
                    acknowledged.append((await client.classify(_case(number))).classification_id)
                except TriageError as error:
                    errors.append(str(error))
                number += callers

        await asyncio.gather(*(caller(i) for i in range(callers)))
    return acknowledged, errors


async def kill_replica(replica: Replica) -> str:
    """kill -9 of the replica's supervisor; workers still serving 2 s later are killed with its group."""
    workers = replica.worker_pids()
    replica.kill()

    async def gone() -> bool:
        return not stack.living(workers)

    with contextlib.suppress(TimeoutError):
        await stack.eventually(gone, "workers gone", within_seconds=2)
    orphans = stack.living(workers)
    replica.kill_group()
    if orphans:
        return f"{len(orphans)} of {len(workers)} workers outlived their supervisor by 2 s (killed with its group)"
    return f"its {len(workers)} workers died with their supervisor"


@dataclass
class KillResult:
    checks: list[Check]
    load: Load
    typed_ok: int
    audited: int
    note: str


async def kill_a_replica_under_load(
    topology: Topology, seconds: float, *, restart: bool, concurrency: int = 50
) -> KillResult:
    """ghz and typed callers through nginx; one replica is killed a third into the run (and restarted)."""
    before = await asyncio.to_thread(topology.backing.audited)
    stop = asyncio.Event()
    typed = asyncio.create_task(_typed_callers(topology, stop))
    load = asyncio.create_task(
        ghz(topology.target, topology.keys["load"], topology.backing.cases, concurrency=concurrency, seconds=seconds)
    )
    victim = topology.replicas[0]
    await asyncio.sleep(seconds / 3)
    note = await kill_replica(victim)
    stack.progress(f"killed {victim.name}: {note}")
    if restart:
        await victim.start()
        stack.progress(f"{victim.name} restarted")
    result = await load
    stop.set()
    acknowledged, errors = await typed
    audited = await asyncio.to_thread(topology.backing.audited) - before
    quoted = ",".join(f"'{i}'" for i in acknowledged) or "''"
    found = await asyncio.to_thread(
        topology.backing.postgres.scalar,
        topology.backing.database_url,
        f"SELECT count(*) FROM audit_events WHERE classification_id IN ({quoted})",
    )
    acked = result.ok + len(acknowledged)
    unanswered = result.calls - result.ok
    victim_calls = sum(1 for e in victim.log() if e.get("event") == "call") if restart else 0
    cut = _cut_by_the_kill(topology)
    checks = [
        _only_retryable(result.codes, result.codes_text(), errors, cut),
        # The typed client retries UNAVAILABLE; a response nginx cut after its headers it cannot.
        Check("the typed client's retries succeeded",
              all(e.startswith("INTERNAL") for e in errors) and len(acknowledged) > 0,
              f"{len(acknowledged)} OK, {len(errors)} failed {errors[:3]}"),
        Check("every typed-client classification is in the audit", found == len(acknowledged),
              f"{found} of {len(acknowledged)} ids found"),
        # More may be audited than acknowledged: a call classified just before its replica died,
        # whose answer was lost (and which the typed client may have retried).
        Check("every acknowledged classification is in the audit", acked <= audited,
              f"{acked} acknowledged, {audited} audited, {unanswered} ghz calls unanswered"),
    ]  # fmt: skip
    if restart:
        checks.append(Check("the restarted replica serves again", victim_calls > 0, f"{victim_calls} calls since"))
    return KillResult(checks, result, len(acknowledged), audited, note)


async def global_budget_across_replicas(topology: Topology, calls: int = 200) -> list[Check]:
    """B routed to a priced model, a small global budget, 200 calls at once over every worker."""
    async with AsyncTriageClient(topology.target, api_key=topology.keys["admin"]) as admin:
        price = BackendPrice(backend=BACKEND, output_usd_micros_per_million_tokens=OUTPUT_USD_MICROS_PER_MILLION)
        await stack.route_to_model(
            admin, ("high_risk",), STRATEGY_MOST_URGENT, price=price, global_budget_usd_micros=BUDGET_USD_MICROS
        )
    await asyncio.sleep(1.5)  # every process has reloaded the configuration
    async with AsyncTriageClient(topology.target, api_key=topology.keys["load"]) as client:
        await asyncio.gather(*(client.classify(_case(100_000 + n)) for n in range(calls)), return_exceptions=True)
    backing = topology.backing
    spent = await asyncio.to_thread(backing.postgres.spent_usd_micros, backing.database_url)
    bound = BUDGET_USD_MICROS + WORST_CALL_USD_MICROS
    return [
        Check("global budget holds across replicas", 0 < spent <= bound,
              f"spent {spent} of {BUDGET_USD_MICROS} micro-USD (bound {bound}: budget + one call's worst case)"),
    ]  # fmt: skip


@dataclass
class Report:
    checks: list[Check]
    kill: KillResult
    seconds: float

    def text(self) -> str:
        load = self.kill.load
        figures = table(
            ["calls (ghz)", "codes", "req/s", "p50 ms", "p99 ms", "typed OK", "acknowledged", "audited"],
            [[load.calls, load.codes_text(), f"{load.requests_per_second:.0f}", load.p50_ms, load.p99_ms,
              self.kill.typed_ok, load.ok + self.kill.typed_ok, self.kill.audited]],
        )  # fmt: skip
        checks = table(
            ["check", "", "detail"], [[c.name, "ok" if c.passed else "FAILED", c.detail] for c in self.checks]
        )
        return (
            f"2 replicas x 2 workers behind nginx, PostgreSQL, Redis; replica-0 killed (-9) under load, "
            f"{self.seconds:g} s at c=50\n({self.kill.note})\n\n{figures}\n\n{checks}"
        )

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# How nginx's error log ends a line about a response whose upstream died after its headers were passed on
# (closed, or reset by the kill: "... while reading response header" is before them). nginx can then only
# reset the caller's stream, which gRPC reads as INTERNAL (not retryable, and not ours).
_CUT_AFTER_HEADERS = " while reading upstream,"


def _cut_by_the_kill(topology: Topology) -> int:
    """Responses nginx cut after their headers because the replica died; INTERNAL from a replica: none."""
    log = topology.backing.directory / "nginx" / "error.log"
    cut = log.read_text().count(_CUT_AFTER_HEADERS) if log.exists() else 0
    ours = sum(
        1 for r in topology.replicas for e in r.log() if e.get("event") == "call" and e.get("code") == "INTERNAL"
    )
    return cut if ours == 0 else -1


def _only_retryable(codes: dict[str, int], text: str, typed_errors: list[str], cut: int) -> Check:
    """Callers saw OK or UNAVAILABLE; an INTERNAL only where nginx cut a response after its headers."""
    internal = codes.get("INTERNAL", 0) + sum(1 for e in typed_errors if e.startswith("INTERNAL"))
    passed = set(codes) <= {"OK", "UNAVAILABLE", "INTERNAL"} and internal <= cut
    detail = f"{text}; nginx cut {cut} responses after their headers (-1: a replica answered INTERNAL itself)"
    return Check("callers saw only UNAVAILABLE (or a response cut by the kill)", passed, detail)


async def run(directory: Path, *, seconds: float, budget: bool, restart: bool = True) -> Report:
    async with running(directory) as topology:
        checks = await rate_limit_across_replicas(topology)
        stack.progress("rate limit checked; load and kill")
        kill = await kill_a_replica_under_load(topology, seconds, restart=restart)
        checks += kill.checks
        stack.progress("kill checked")
        if budget:
            checks += await global_budget_across_replicas(topology)
            stack.progress("budget checked")
    return Report(checks, kill, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("TOPOLOGY_SECONDS", "30")))
    parser.add_argument(
        "--budget",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("TOPOLOGY_BUDGET", "1") != "0",
        help="check the global budget across replicas (default; TOPOLOGY_BUDGET=0 leaves it out)",
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="triage-topology-"))
    report = asyncio.run(run(directory, seconds=args.seconds, budget=args.budget))
    print(report.text())
    if not report.passed:
        print(f"\nlogs kept in {directory}")
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
