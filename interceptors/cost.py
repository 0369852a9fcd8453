"""The innermost interceptor: what the call's model steps cost, accounted for and reported.

Model steps write each call they make into the call's ledger as it returns
(advice.py); this interceptor, when the call ends however it ends (answered,
failed, or cancelled by the caller mid-stream), adds the ledger to the usage
totals per key, day, step and backend, counts it in the model cost and
token metrics, and reports the total as the `x-cost-usd` trailer. Budgets are
checked before each model call, where the worst case is known (server/budgets.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server import metrics
from server.calls import CallState, current_call
from server.errors import DATABASE_FAULTS
from server.group_commit import GroupCommit
from server.store.usage import CallUsage

log = logging.getLogger("triage.cost")

COST_TRAILER = "x-cost-usd"


class CostInterceptor(ServerInterceptor):
    def __init__(self, usage: GroupCommit[CallUsage]) -> None:
        super().__init__()
        self._usage = usage

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        call = current_call()
        if call is None or call.principal is None:
            return await call_through(method, request, context)
        try:
            response = await call_through(method, request, context)
        except BaseException:
            await self._account(call)
            raise
        if isinstance(response, AsyncIterator):
            return self._stream(response, call)
        await self._account(call)
        return response

    async def _stream(self, responses: AsyncIterator[Any], call: CallState) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        finally:
            await self._account(call)

    async def _account(self, call: CallState) -> None:
        usd_micros = sum(entry.usd_micros for entry in call.ledger)
        for entry in call.ledger:
            metrics.model_used(entry.step, entry.backend, entry.input_tokens, entry.output_tokens, entry.usd_micros)
        call.trailers.append((COST_TRAILER, f"{usd_micros / 1_000_000:.6f}"))
        if call.ledger and call.principal is not None:
            try:
                # Written with its batch even if the caller cancels meanwhile.
                await self._usage.submit((call.principal.account, datetime.now(UTC).date(), call.ledger))
            except DATABASE_FAULTS as error:
                # The call's own outcome stands (its spending is already settled against the budgets);
                # only the usage report misses it.
                log.error(
                    "usage not recorded: the database is unavailable",
                    extra={"fields": {"error_type": type(error).__name__, "usd_micros": usd_micros}},
                )
