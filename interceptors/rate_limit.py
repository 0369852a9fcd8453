"""Rate limits per caller: counted before the work, reported on every answer.

The caller's own limit applies when its key has one, else its role's
default. Every answer carries `x-ratelimit-limit`, `x-ratelimit-remaining`
and `x-ratelimit-reset` (seconds until the window frees a call) for the
tightest limit (in the headers; in the trailers of an error); a refused call
gets RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo. Calls without a principal (health, reflection) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server import metrics
from server.calls import Role, current_call
from server.errors import ResourceExhausted
from server.rate_limits import RateLimiter


class RateLimitInterceptor(ServerInterceptor):
    """Counts each authenticated call against its caller's limits."""

    def __init__(self, limiter: RateLimiter, role_defaults: Callable[[], Mapping[Role, str]]) -> None:
        """`role_defaults` gives the current defaults: they change at run time."""
        super().__init__()
        self._limiter = limiter
        self._defaults = role_defaults

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        call = current_call()
        principal = call.principal if call is not None else None
        if call is None or principal is None or principal.role is None:
            return await call_through(method, request, context)
        limits = principal.rate_limit or self._defaults()[principal.role]
        decision = await self._limiter.hit(principal.subject, limits)
        call.response_metadata.extend(
            (
                ("x-ratelimit-limit", str(decision.limit)),
                ("x-ratelimit-remaining", str(decision.remaining)),
                ("x-ratelimit-reset", str(decision.reset_seconds)),
            )
        )
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(principal.role.value).inc()
            raise ResourceExhausted(
                f"rate limit of {decision.description} reached; retry in {decision.reset_seconds} s",
                subject=principal.subject,
                description=f"calls limited to {decision.description}",
                retry_after=timedelta(seconds=decision.reset_seconds),
            )
        return await call_through(method, request, context)
