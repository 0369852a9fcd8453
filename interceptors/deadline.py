"""Deadlines: every call gets one, none gets more than the maximum.

A caller that sets no deadline gets the method's default (Classify 2 s,
Explain 30 s); no call may run past the configured maximum; a call arriving
with less than the minimum left is refused before any work. The deadline is
put on the call state, where the pipeline checks it between steps. A
caller's own deadline is enforced by gRPC, which cancels the call when it
passes; a default or capped deadline, which gRPC does not know, is enforced
here the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server.calls import current_call
from server.errors import DeadlineExceeded


class DeadlineInterceptor(ServerInterceptor):
    """Applies default and maximum deadlines and refuses calls already out of time."""

    def __init__(
        self,
        defaults_seconds: Mapping[str, float],
        *,
        fallback_seconds: float,
        maximum_seconds: float,
        minimum_seconds: float,
    ) -> None:
        super().__init__()
        self._defaults = defaults_seconds
        self._fallback = fallback_seconds
        self._maximum = maximum_seconds
        self._minimum = minimum_seconds

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining < self._minimum:
            raise DeadlineExceeded(
                f"the call arrived with {remaining * 1000:.0f} ms left, under the {self._minimum * 1000:.0f} ms "
                "this service needs; send a longer deadline"
            )
        own = self._defaults.get(method_name, self._fallback) if remaining is None else remaining
        budget = min(own, self._maximum)
        call = current_call()
        if call is not None:
            call.deadline = time.monotonic() + budget
        if remaining is not None and remaining <= self._maximum:
            # The caller's deadline stands, and gRPC enforces it: cancelling the call cancels the work.
            return await call_through(method, request, context)
        loop_deadline = asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout_at(loop_deadline):
                response = await call_through(method, request, context)
        except TimeoutError:
            raise _expired() from None
        if isinstance(response, AsyncIterator):
            return _bounded(response, loop_deadline)
        return response


async def _bounded(responses: AsyncIterator[Any], loop_deadline: float) -> AsyncIterator[Any]:
    # The timeout covers producing each response, not the caller's reading of it.
    while True:
        try:
            async with asyncio.timeout_at(loop_deadline):
                response = await anext(responses)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise _expired() from None
        yield response


def _expired() -> DeadlineExceeded:
    return DeadlineExceeded("the deadline expired before the call was finished")
