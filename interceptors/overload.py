"""Overload: past the configured number of calls in flight, a call is refused at once, retryably.

A refused call gets UNAVAILABLE with RetryInfo (the typed client retries it
with backoff; a load balancer tries another replica), is counted in
triage_overload_refused_total and summed up in one warning per interval
rather than a line per call. Health checks are never refused: a process
busy at its limit is working, not dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server import metrics
from server.errors import Unavailable

log = logging.getLogger("triage.overload")

# At most one overload warning per interval, however many calls are refused.
LOG_INTERVAL_SECONDS = 10.0
_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class OverloadInterceptor(ServerInterceptor):
    """Counts the calls in flight and refuses those past the limit."""

    def __init__(self, max_in_flight_calls: int, retry_after_seconds: float) -> None:
        super().__init__()
        self.in_flight = 0
        self._limit = max_in_flight_calls
        self._retry_after = timedelta(seconds=retry_after_seconds)
        self._refused_unlogged = 0
        self._last_logged = -LOG_INTERVAL_SECONDS

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        if method_name.startswith(_EXEMPT_PREFIXES):
            return await call_through(method, request, context)
        if self.in_flight >= self._limit:
            self._refused(method_name)
            raise Unavailable(
                f"the server is at its limit of {self._limit} calls in flight; retry shortly or on another replica",
                retry_after=self._retry_after,
            )
        # Each call runs in its own task, which ends when the call does, however
        # it ends (a stream read to the end, cancelled by the caller, failed).
        task = asyncio.current_task()
        assert task is not None
        self.in_flight += 1
        task.add_done_callback(self._finished)
        return await call_through(method, request, context)

    def _finished(self, _task: asyncio.Task[Any]) -> None:
        self.in_flight -= 1

    def _refused(self, method_name: str) -> None:
        metrics.OVERLOAD_REFUSED.labels(method_name).inc()
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._last_logged >= LOG_INTERVAL_SECONDS:
            log.warning(
                "overloaded: refusing calls",
                extra={
                    "fields": {
                        "refused_since_last_warning": self._refused_unlogged,
                        "max_in_flight_calls": self._limit,
                    }
                },
            )
            self._refused_unlogged = 0
            self._last_logged = now
