"""Rate limits per caller: counted before the work, reported on every answer.

The caller's own limit applies when its key has one, else its role's
default. A gateway's calls are counted per end user, by the address it
forwards (server/end_users.py); a call of its without one is INVALID_ARGUMENT,
and the address of any other caller is not read. Every answer carries
`x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (seconds
until the window frees a call) for the tightest limit (in the headers; in the
trailers of an error); a refused call gets RESOURCE_EXHAUSTED with
QuotaFailure and RetryInfo. Calls without a principal (health, reflection) are
not counted. A role the runtime configuration has no default for (it is
checked, so this is a defect) is counted against the settings' default for it
and logged, never failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server import metrics
from server.calls import Role, current_call
from server.config import Settings
from server.end_users import EndUsers
from server.errors import ResourceExhausted
from server.rate_limits import RateLimiter

log = logging.getLogger("triage.rate_limits")


class RateLimitInterceptor(ServerInterceptor):
    """Counts each authenticated call against its caller's limits."""

    def __init__(
        self,
        limiter: RateLimiter,
        role_defaults: Callable[[], Mapping[Role, str]],
        end_users: EndUsers,
        fallback: Mapping[Role, str] | None = None,
    ) -> None:
        """`role_defaults` gives the current defaults: they change at run time. `end_users` counts a gateway's
        calls per end user. `fallback` (the settings' role limits; the documented defaults when not given) stands
        in for a role missing from them."""
        super().__init__()
        self._limiter = limiter
        self._end_users = end_users
        self._defaults = role_defaults
        self._fallback = {**Settings.model_construct().role_rate_limits(), **(fallback or {})}
        self._reported: set[Role] = set()

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        call = current_call()
        principal = call.principal if call is not None else None
        if call is None or principal is None or principal.role is None:
            return await call_through(method, request, context)
        limits = principal.rate_limit or self._role_default(principal.role)
        subject, quota_subject = principal.subject, principal.subject
        if principal.role is Role.GATEWAY:
            subject = self._end_users.subject(principal.subject, context.invocation_metadata() or ())
            # The refusal names the gateway's limit per end user, not the end user.
            quota_subject = f"{principal.subject}/end-user"
        decision = await self._limiter.hit(subject, limits)
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
                subject=quota_subject,
                description=f"calls limited to {decision.description}",
                retry_after=timedelta(seconds=decision.reset_seconds),
            )
        return await call_through(method, request, context)

    def _role_default(self, role: Role) -> str:
        limits = self._defaults().get(role)
        if limits is not None:
            return limits
        if role not in self._reported:  # once per role: this is a defect, not a state of each call
            self._reported.add(role)
            log.error(
                "no default rate limit for a role in the configuration; using the settings'",
                extra={"fields": {"role": role.value}},
            )
        return self._fallback[role]
