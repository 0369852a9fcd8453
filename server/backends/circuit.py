"""A circuit breaker per backend: stop calling a backend that keeps failing.

Closed: calls go through. After `failure_threshold` failures in a row it
opens: calls are not made (the step falls back to rules at once) for
`open_seconds`. Then one trial call is let through (half-open); its success
closes the circuit, its failure opens it again.
"""

from __future__ import annotations

import time
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int, open_seconds: float) -> None:
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at < self._open_seconds:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a call may be made now; in half-open, only one at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_running:
            return False
        self._trial_running = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
        self._trial_running = False
