"""`make soak`: sustained load on one server of two workers, on PostgreSQL and Redis (SOAK_SECONDS, default 600).

ghz at c=200 with real cases (NHAMCS, each complaint different) and the cache
off, so every call is classified and audited. Prints calls, status codes,
acknowledged vs audited, latency and each worker's resident memory at the
start (after a warm-up) and the end; exits 1 if a call failed, an acknowledged
classification is missing from the audit, or a worker ends above 200 MB
(the issue 10 target). tests/e2e/test_soak.py runs a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import stack
from bench.load import Load, ghz, table

TARGET_RSS_MB = 200.0
WARMUP_CALLS = 2_000


@dataclass(frozen=True)
class Report:
    seconds: float
    concurrency: int
    load: Load
    audited: int
    rss_start_mb: dict[int, float]
    rss_end_mb: dict[int, float]

    @property
    def failures(self) -> list[str]:
        failed = []
        if set(self.load.codes) != {"OK"}:
            failed.append(f"calls failed: {self.load.codes_text()}")
        if self.audited != self.load.ok:
            failed.append(f"{self.load.ok} acknowledged but {self.audited} audited")
        return failed

    @property
    def over_memory(self) -> list[int]:
        return [pid for pid, mb in self.rss_end_mb.items() if mb > TARGET_RSS_MB]

    def text(self) -> str:
        load = self.load
        figures = table(
            ["calls", "codes", "req/s", "p50 ms", "p99 ms", "acknowledged", "audited"],
            [[load.calls, load.codes_text(), f"{load.requests_per_second:.0f}", load.p50_ms, load.p99_ms, load.ok,
              self.audited]],
        )  # fmt: skip
        memory = table(
            ["worker pid", "RSS start MB", "RSS end MB"],
            [[pid, f"{self.rss_start_mb.get(pid, 0):.0f}", f"{mb:.0f}"] for pid, mb in self.rss_end_mb.items()],
        )
        verdict = [f"  {'met ' if not self.over_memory else 'MISSED'}  RSS <= {TARGET_RSS_MB:g} MB per worker"]
        verdict += [f"  FAILED  {failure}" for failure in self.failures]
        return (
            f"soak: {self.seconds:g} s at c={self.concurrency}, 1 server x 2 workers, PostgreSQL, Redis, cache off\n\n"
            f"{figures}\n\n{memory}\n\n" + "\n".join(verdict)
        )


def _rss(pids: list[int]) -> dict[int, float]:
    return {pid: round(stack.rss_mb(pid), 1) for pid in pids}


async def run(directory: Path, *, seconds: float, concurrency: int = 200, warmup_calls: int = WARMUP_CALLS) -> Report:
    async with stack.backing(directory, cases=2_000) as backing:
        server = backing.replica("server", workers=2, TRIAGE_CACHE_TTL_SECONDS="0")
        await server.start()
        try:
            target = f"127.0.0.1:{server.port}"
            key = backing.keys["load"]
            await ghz(target, key, backing.cases, concurrency=concurrency, connections=20, total=warmup_calls)
            before = await asyncio.to_thread(backing.audited)
            workers = server.worker_pids()
            start = _rss(workers)
            stack.progress(f"warmed up; soaking {seconds:g} s at c={concurrency}")
            load = await ghz(target, key, backing.cases, concurrency=concurrency, connections=20, seconds=seconds)
            end = _rss(workers)
            audited = await asyncio.to_thread(backing.audited) - before
        finally:
            await server.stop()
    return Report(seconds, concurrency, load, audited, start, end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("SOAK_CONCURRENCY", "200")))
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="triage-soak-"))
    report = asyncio.run(run(directory, seconds=args.seconds, concurrency=args.concurrency))
    print(report.text())
    if report.failures or report.over_memory:
        print(f"\nlogs kept in {directory}")
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
