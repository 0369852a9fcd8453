"""`python -m bench.fake_model`: an OpenAI-compatible model server that answers after a set delay.

A standalone process (so that a fault script may stop, hang or kill it) around
the test suite's chat-completions server (tests/fake_llm.py). It answers
decision points B and C and the narrative with plausible content, each after
`--delay-seconds`, and logs {"event": "serving", "port": N} once it listens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import threading

from tests.fake_llm import Reply, answer, start_fake_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    parser.add_argument("--delay-seconds", type=float, default=1.0, help="how long each answer takes")
    args = parser.parse_args()
    fake, http = start_fake_llm(args.port)
    delay = args.delay_seconds
    for question, reply in {
        "high_risk": answer(high_risk=False, reasons=[]),
        "resources": answer(resources=[{"kind": "labs", "reason": "troponin"}]),
        "narrative": Reply(chunks=("A narrative.",)),
    }.items():
        fake.defaults[question] = dataclasses.replace(reply, delay_seconds=delay)
    # Nothing reads the record of requests in a long run: keep memory flat.
    fake.requests = _Discard()
    print(json.dumps({"event": "serving", "port": http.server_address[1]}), flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    http.shutdown()


class _Discard(list[dict[str, object]]):
    """A request log that keeps nothing."""

    def append(self, item: dict[str, object]) -> None:
        pass


if __name__ == "__main__":
    main()
