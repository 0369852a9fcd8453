"""The circuit breaker's trial: one at a time, and never wedged by a caller that did not report."""

from __future__ import annotations

import time

from server.breaker import CircuitBreaker


def test_a_trial_whose_caller_never_reports_gives_way_after_a_window() -> None:
    breaker = CircuitBreaker("unit-test", failure_threshold=1, open_seconds=0.05, fallback="none")
    breaker.failed()
    assert (breaker.state, breaker.allow()) == ("open", False)

    time.sleep(0.06)
    assert breaker.allow()  # the trial, whose caller is then cancelled and reports nothing
    assert not breaker.allow()  # one trial at a time

    time.sleep(0.06)
    assert breaker.allow()
    breaker.succeeded()
    assert (breaker.state, breaker.allow()) == ("closed", True)
