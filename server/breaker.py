"""A circuit breaker: stop calling a dependency that keeps failing, and say so once.

Closed: calls go through. After `failure_threshold` failures in a row it
opens: calls are not made (the caller takes its fallback at once) for
`open_seconds`. Then one trial is made (half-open): by `probe`, in the
background, when there is one (no caller waits on it, and the state comes
back even when no call comes), else by the next call. The trial's success
closes the circuit; its failure opens it for another window. So a dependency
that hangs costs one timeout per window, not one per call.

Opening and closing are logged (one line each, never one per call) and
counted in metrics, by dependency: a Redis use, or a model backend's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from server import metrics

log = logging.getLogger("triage.circuit")

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """The circuit of one dependency; callers ask `allow()` and report `succeeded()` or `failed()`."""

    def __init__(
        self,
        dependency: str,
        *,
        failure_threshold: int,
        open_seconds: float,
        fallback: str,
        probe: Callable[[], Awaitable[bool]] | None = None,
        on_change: Callable[[bool], None] = lambda _: None,
    ) -> None:
        """`fallback` says what callers do while it is open (logged); `on_change(True)` on opening, False on closing."""
        self.dependency = dependency
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._fallback = fallback
        self._probe = probe
        self._on_change = on_change
        self._failures = 0
        # When the current window began, and when the circuit first opened (for the closing line).
        self._opened_at: float | None = None
        self._first_opened_at = 0.0
        self._trial_started_at: float | None = None
        self._probing: asyncio.Task[None] | None = None
        metrics.DEPENDENCY_CIRCUIT_OPEN.labels(dependency).set(0)

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at < self._open_seconds:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a call may be made now: always when closed; when half-open and there is no probe, one trial."""
        if self._opened_at is None:
            return True
        if self._probe is not None or self.state == "open":
            return False
        now = time.monotonic()
        # A trial whose caller never reported (cancelled with it) gives way after a window.
        if self._trial_started_at is not None and now - self._trial_started_at < self._open_seconds:
            return False
        self._trial_started_at = now
        return True

    def succeeded(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self._close()

    def failed(self, error: BaseException | None = None) -> None:
        self._failures += 1
        if self._opened_at is None:
            if self._failures >= self._threshold:
                self._open(error)
        elif self._trial_started_at is not None:
            # The trial failed: still away, another window (logged only when it closes).
            self._opened_at = time.monotonic()
            self._trial_started_at = None

    def _open(self, error: BaseException | None) -> None:
        self._opened_at = self._first_opened_at = time.monotonic()
        self._trial_started_at = None
        fields: dict[str, object] = {
            "dependency": self.dependency,
            "failures": self._failures,
            "open_seconds": self._open_seconds,
            "fallback": self._fallback,
        }
        if error is not None:
            fields["error_type"] = type(error).__name__  # the type only: its text may quote what was sent
        log.warning("circuit opened", extra={"fields": fields})
        metrics.DEPENDENCY_CIRCUIT_OPEN.labels(self.dependency).set(1)
        metrics.DEPENDENCY_CIRCUIT_OPENED.labels(self.dependency).inc()
        self._on_change(True)
        if self._probe is not None and (self._probing is None or self._probing.done()):
            self._probing = asyncio.create_task(self._probe_until_closed(self._probe))

    def _close(self) -> None:
        open_for = time.monotonic() - self._first_opened_at
        self._opened_at = self._trial_started_at = None
        self._failures = 0
        log.info(
            "circuit closed",
            extra={"fields": {"dependency": self.dependency, "open_for_seconds": round(open_for, 3)}},
        )
        metrics.DEPENDENCY_CIRCUIT_OPEN.labels(self.dependency).set(0)
        self._on_change(False)

    async def _probe_until_closed(self, probe: Callable[[], Awaitable[bool]]) -> None:
        while self._opened_at is not None:
            await asyncio.sleep(self._opened_at + self._open_seconds - time.monotonic())
            if self._opened_at is None:
                return
            self._trial_started_at = time.monotonic()
            try:
                async with asyncio.timeout(self._open_seconds):
                    healthy = await probe()
            except Exception:  # noqa: BLE001 - any failure of the probe means still away
                healthy = False
            if healthy:
                self.succeeded()
            else:
                self.failed()

    async def close(self) -> None:
        """Stops probing (the owner is closing its connections)."""
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
