"""Monthly budgets on model spending: the global one and each key's own, exact across processes.

Before a model call its worst-case cost is reserved against both budgets in
the shared store (server/store/budgets.py), atomically, so that all worker
processes and replicas together never spend more than a budget; after it,
the actual cost is settled and the reservation released. A call whose worst
case does not fit is refused the model (OverBudget): its step falls back to
the rules, or the whole call is refused when its key says so. Each hold has
a lease (the model's time plus a margin): the holds of a process killed
mid-call are released when it ends. Calendar months in UTC; a call counts
towards the month it reserved in. Crossing 50, 80 and 100 % of a budget is
logged once per month, by whichever process sees it first.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from server.calls import Principal
from server.ids import new_id
from server.refresh import Refresher
from server.runtime_config import RuntimeConfigs
from server.store.budgets import GLOBAL, BudgetStore, Counters, Hold, NoRoom

log = logging.getLogger("triage.budgets")

ALERT_PERCENTS = (50, 80, 100)
# How often each process releases expired holds and checks the global budget's alerts.
_REFRESH_SECONDS = 1.0
# A hold outlives its model call's time by this much before another process may release it:
# enough for a slow settlement (a busy database), short enough that a dead worker's holds come back soon.
LEASE_MARGIN_SECONDS = 30.0


class OverBudget(Exception):
    """A model call's worst case does not fit a budget; `scope` says which ("key", "global")."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


class BudgetUnavailable(Exception):
    """The budgets could not be checked (the database failed): the model is not asked."""


def month_start(day: date) -> date:
    return day.replace(day=1)


class Budgets:
    def __init__(self, store: BudgetStore, configs: RuntimeConfigs) -> None:
        self._store = store
        self._configs = configs
        # The highest alert threshold known to be logged, per month and budget.
        self._alerted: dict[tuple[date, str], int] = {}
        self._refresher = Refresher(self.refresh, interval_seconds=_REFRESH_SECONDS, what="budgets")

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def reserve(self, principal: Principal | None, usd_micros: int, *, seconds: float) -> Hold:
        """Holds `usd_micros` against the global budget and the caller's for a call of at most `seconds`.

        OverBudget if it does not fit; BudgetUnavailable if the store fails.
        """
        now = datetime.now(UTC)
        key_id = principal.account if principal is not None else GLOBAL
        key_limit = principal.monthly_budget_usd_micros if principal is not None else 0
        hold = Hold(new_id(), month_start(now.date()), key_id, usd_micros)
        expires_at = now + timedelta(seconds=seconds + LEASE_MARGIN_SECONDS)
        try:
            await asyncio.to_thread(
                self._store.reserve,
                hold,
                expires_at,
                global_limit=self._configs.current.global_monthly_budget_usd_micros,
                key_limit=key_limit or None,
            )
        except NoRoom as no_room:
            raise OverBudget(no_room.scope) from None
        except SQLAlchemyError as error:
            log.warning("could not reserve a model budget", extra={"fields": {"error_type": type(error).__name__}})
            raise BudgetUnavailable from error
        return hold

    async def settle(self, reservation: Hold, usd_micros: int, principal: Principal | None) -> None:
        """Releases the reservation and counts what the call actually cost.

        Shielded: a caller cancelled meanwhile does not leave the hold to its lease.
        """
        settling = asyncio.to_thread(self._store.settle, reservation, usd_micros)
        try:
            after = await asyncio.shield(settling)
        except SQLAlchemyError as error:
            # The hold is released when its lease ends; the call's usage is still written to the totals.
            log.warning("could not settle a model budget", extra={"fields": {"error_type": type(error).__name__}})
            return
        limits = {GLOBAL: self._configs.current.global_monthly_budget_usd_micros}
        if principal is not None and principal.monthly_budget_usd_micros:
            limits[principal.account] = principal.monthly_budget_usd_micros
        for key_id, limit in limits.items():
            if key_id in after:
                await self._alert(reservation.month, key_id, after[key_id], limit)

    async def refresh(self) -> None:
        """Releases the holds of dead processes and alerts on the global budget (its limit may have changed)."""
        now = datetime.now(UTC)
        released = await asyncio.to_thread(self._store.release_expired, now)
        if released:
            log.warning("released expired model budget holds", extra={"fields": {"holds": released}})
        month = month_start(now.date())
        self._alerted = {mark: percent for mark, percent in self._alerted.items() if mark[0] >= month}
        counters = await asyncio.to_thread(self._store.counters, month)
        if GLOBAL in counters:
            limit = self._configs.current.global_monthly_budget_usd_micros
            await self._alert(month, GLOBAL, counters[GLOBAL], limit)

    async def _alert(self, month: date, key_id: str, counters: Counters, limit: int) -> None:
        """Logs each threshold `counters` has crossed that no process has logged yet."""
        if limit <= 0:
            return
        known = max(self._alerted.get((month, key_id), 0), counters.alerted_percent)
        spent = counters.spent_usd_micros
        for percent in ALERT_PERCENTS:
            if percent <= known or spent * 100 < limit * percent:
                continue
            try:
                marked = await asyncio.to_thread(self._store.mark_alerted, month, key_id, percent)
            except SQLAlchemyError as error:
                # Tried again at the next settlement or refresh; a model call never fails for an alert.
                log.warning("could not record a budget alert", extra={"fields": {"error_type": type(error).__name__}})
                break
            # Only the process whose update marks the threshold logs it.
            if marked:
                log.warning(
                    "budget alert",
                    extra={
                        "fields": {
                            "budget": "global" if key_id == GLOBAL else "key",
                            "key_id": key_id,
                            "percent": percent,
                            "spent_usd_micros": spent,
                            "limit_usd_micros": limit,
                        }
                    },
                )
            known = percent
        self._alerted[(month, key_id)] = known
