"""`python -m bench.learned_overhead`: what the learned estimates add to a Classify call.

Real cases (NHAMCS 2020, as an EHR would send them), in process, interleaved:

- the estimates' own cost per case: features, both linear models and their
  contributors (what issue 9 budgets at 50 us a call);
- the whole pipeline with the default configuration (learned B, C and D)
  against the rules alone. This difference is larger than the estimates'
  cost: the rules alone stop at B for a third of these visits, while the
  default goes on to C and D for most of them.

The ghz figures of `make bench` include both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time

from server.datasets import nhamcs_visits
from server.domain import Case
from server.esi.engine import CaseFacts, RulesEngine
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RULES_ONLY, RuntimeConfig
from server.validation import validate_case

BUDGET_US = 50.0


async def per_case_us(pipeline: Pipeline, cases: list[Case], config: RuntimeConfig) -> float:
    started = time.perf_counter()
    for case in cases:
        async for _ in pipeline.steps(case, config):
            pass
    return (time.perf_counter() - started) / len(cases) * 1e6


def estimates_us(pipeline: Pipeline, facts: list[CaseFacts]) -> float:
    started = time.perf_counter()
    for one in facts:
        pipeline.learned.estimate(one)
    return (time.perf_counter() - started) / len(facts) * 1e6


async def measure(cases: int, rounds: int) -> tuple[float, float, float]:
    pipeline = Pipeline(RulesEngine())
    sample = [validate_case(v.case) for v in itertools.islice(nhamcs_visits(years=[2020]), cases)]
    facts = [pipeline.engine.read(case) for case in sample]
    await per_case_us(pipeline, sample, RuntimeConfig())  # warm the text memo and caches alike
    rules, learned, own = [], [], []
    for _ in range(rounds):
        own.append(estimates_us(pipeline, facts))
        rules.append(await per_case_us(pipeline, sample, RULES_ONLY))
        learned.append(await per_case_us(pipeline, sample, RuntimeConfig()))
    return statistics.median(own), statistics.median(rules), statistics.median(learned)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    own, rules, learned = asyncio.run(measure(args.cases, args.rounds))
    print(f"per case over {args.cases:,} NHAMCS 2020 cases, median of {args.rounds} interleaved rounds:")
    print(f"  the learned estimates (features, two models, contributors): {own:.1f} us")
    added = learned - rules
    print(f"  pipeline: rules alone {rules:.1f} us, default (learned B, C, D) {learned:.1f} us (+{added:.1f} us)")
    print(f"  {'met ' if own <= BUDGET_US else 'MISSED'}  the learned estimates add at most {BUDGET_US:.0f} us a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
