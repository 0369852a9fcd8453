"""Monthly budgets on model spending: the global one and each key's own.

Before a model call its worst-case cost is reserved against both budgets;
after it, the actual cost is settled and the reservation released. A call
whose worst case does not fit is refused the model (OverBudget): its step
falls back to the rules, or the whole call is refused when its key says so.
Calendar months in UTC. Spending is read from the usage totals every second,
so every process sees what the others spent; reservations are per process.
Crossing 50, 80 and 100 % of a budget is logged once per month and process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime

from server.calls import Principal
from server.refresh import Refresher
from server.runtime_config import RuntimeConfigs
from server.store.usage import UsageStore

log = logging.getLogger("triage.budgets")

ALERT_PERCENTS = (50, 80, 100)
_REFRESH_SECONDS = 1.0
GLOBAL = ""  # the global budget's key in the maps below


class OverBudget(Exception):
    """A model call's worst case does not fit a budget; `scope` says which."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


@dataclass(frozen=True, slots=True)
class Reservation:
    key_id: str
    usd_micros: int


def month_start(day: date) -> date:
    return day.replace(day=1)


class Budgets:
    def __init__(self, store: UsageStore, configs: RuntimeConfigs) -> None:
        self._store = store
        self._configs = configs
        self._month = month_start(datetime.now(UTC).date())
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._alerted: set[tuple[date, str, int]] = set()
        self._refresher = Refresher(self.refresh, interval_seconds=_REFRESH_SECONDS, what="usage")

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    def spent(self, key_id: str = GLOBAL) -> int:
        """Micro-dollars spent this month: by everyone (GLOBAL) or by one key."""
        if key_id == GLOBAL:
            return sum(self._spent.values())
        return self._spent.get(key_id, 0)

    def reserve(self, principal: Principal | None, usd_micros: int) -> Reservation:
        """Holds `usd_micros` against the global budget and the caller's; OverBudget if it does not fit."""
        key_id = principal.account if principal is not None else ""
        limit = self._configs.current.global_monthly_budget_usd_micros
        if self.spent() + sum(self._reserved.values()) + usd_micros > limit:
            raise OverBudget("global")
        if principal is not None and principal.monthly_budget_usd_micros:
            held = self.spent(key_id) + self._reserved.get(key_id, 0)
            if held + usd_micros > principal.monthly_budget_usd_micros:
                raise OverBudget("key")
        self._reserved[key_id] = self._reserved.get(key_id, 0) + usd_micros
        return Reservation(key_id, usd_micros)

    def settle(self, reservation: Reservation, usd_micros: int, principal: Principal | None) -> None:
        """Releases the reservation and counts what the call actually cost."""
        key_id = reservation.key_id
        self._reserved[key_id] -= reservation.usd_micros
        self._spent[key_id] = self._spent.get(key_id, 0) + usd_micros
        self._alert(principal)

    async def refresh(self) -> None:
        today = datetime.now(UTC).date()
        self._month = month_start(today)
        self._spent = await asyncio.to_thread(self._store.spent_since, self._month)
        self._alert(None)

    def _alert(self, principal: Principal | None) -> None:
        scopes = [(GLOBAL, self._configs.current.global_monthly_budget_usd_micros)]
        if principal is not None and principal.monthly_budget_usd_micros:
            scopes.append((principal.account, principal.monthly_budget_usd_micros))
        for key_id, limit in scopes:
            if limit <= 0:
                continue
            spent = self.spent(key_id)
            for percent in ALERT_PERCENTS:
                mark = (self._month, key_id, percent)
                if spent * 100 >= limit * percent and mark not in self._alerted:
                    self._alerted.add(mark)
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
