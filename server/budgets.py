"""Monthly budgets on model spending: the global one and each key's own, exact across processes.

Before a model call its worst-case cost is reserved against both budgets, and
after it the actual cost is settled. The money is held in the shared store
(server/store/budgets.py), atomically, so that all worker processes and
replicas together never spend more than a budget. To keep the store off the
path of most calls, a process holds money in blocks: one store transaction
holds the worst case of many calls (at most 1/64 of the smaller budget, so
that blocks idle in other processes leave little unusable), the calls draw on
it in memory, and what they spent is written back once a second. Near a
budget's end the blocks shrink to one call. A call whose worst case does not
fit is refused the model (OverBudget): its step falls back to the rules, or
the whole call is refused when its key says so.

Each block has a lease, renewed while it is used: the blocks of a process
killed mid-call are released by the others when it ends, and what that
process spent since its last write is not counted in the budget (its calls'
usage totals are). Calendar months in UTC; a call counts towards the month
it reserved in. Crossing 50, 80 and 100 % of a budget is logged once per
month, by whichever process sees it first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from server import metrics
from server.calls import Principal
from server.ids import new_id
from server.refresh import Refresher
from server.runtime_config import RuntimeConfigs
from server.store.budgets import GLOBAL, BudgetStore, Counters, Hold, NoRoom

log = logging.getLogger("triage.budgets")

ALERT_PERCENTS = (50, 80, 100)
# How often each process writes what its calls spent, renews its leases, releases expired holds
# and checks the global budget's alerts.
_REFRESH_SECONDS = 1.0
# A lease outlives its calls' time by this much before another process may release it:
# enough for a slow write (a busy database), short enough that a dead worker's money comes back soon.
LEASE_MARGIN_SECONDS = 30.0
# A block holds the worst case of up to this many calls, and at most this share of the smaller budget.
BLOCK_CALLS = 64
BLOCK_SHARE = 64
# A block no call has drawn on for this long goes back to the budgets.
BLOCK_IDLE_SECONDS = 5.0
# After a budget refuses a block, its calls are refused without asking the store for this long.
REFUSAL_SECONDS = 1.0


class OverBudget(Exception):
    """A model call's worst case does not fit a budget; `scope` says which ("key", "global")."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


class BudgetUnavailable(Exception):
    """The budgets could not be checked (the database failed): the model is not asked."""


def month_start(day: date) -> date:
    return day.replace(day=1)


@dataclass(eq=False)
class _Block:
    """Money held in the store for one budget (a key's, with the global one) and month, drawn on by calls."""

    hold: Hold
    key_limit: int | None  # the key's budget when the block was held (None: the key has none)
    lease_seconds: float
    free: int  # not promised to a call
    calls: int = 0  # calls in flight drawing on it
    unwritten: int = 0  # spent by settled calls, not yet written to the store
    open: bool = True  # new calls may draw on it
    used_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A call's worst case, promised out of a block."""

    block: _Block
    usd_micros: int


class Budgets:
    def __init__(self, store: BudgetStore, configs: RuntimeConfigs) -> None:
        self._store = store
        self._configs = configs
        # The block calls draw on, per month and key_id; closed ones stay in _blocks until written back.
        self._open: dict[tuple[date, str], _Block] = {}
        self._blocks: list[_Block] = []
        # A block being held for a budget, shared by the calls that wait for it.
        self._holding: dict[tuple[date, str], asyncio.Future[None]] = {}
        # Budgets that refused a call recently: until when (monotonic) and which scope, by month, key_id and limits.
        self._refused: dict[tuple[date, str, int | None, int], tuple[float, str]] = {}
        # The highest alert threshold known to be logged, per month and budget.
        self._alerted: dict[tuple[date, str], int] = {}
        self._refresher = Refresher(self.refresh, interval_seconds=_REFRESH_SECONDS, what="budgets")

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        """Writes back what was spent and releases every block (calls have finished by now)."""
        await self._refresher.stop()
        for block in self._blocks:
            block.open = False
        try:
            await self._write_back(datetime.now(UTC))
        except SQLAlchemyError as error:
            log.warning("could not release model budget blocks", extra={"fields": {"error_type": type(error).__name__}})

    async def reserve(self, principal: Principal | None, usd_micros: int, *, seconds: float) -> Reservation:
        """Promises `usd_micros` out of the global budget and the caller's, for a call of at most `seconds`.

        OverBudget if it does not fit; BudgetUnavailable if the store fails.
        """
        now = datetime.now(UTC)
        key_id = principal.account if principal is not None else GLOBAL
        key_limit = (principal.monthly_budget_usd_micros if principal is not None else 0) or None
        budget = (month_start(now.date()), key_id)
        while True:
            block = self._open.get(budget)
            if block is not None and block.open and block.free >= usd_micros:
                block.free -= usd_micros
                block.calls += 1
                block.used_at = time.monotonic()
                block.lease_seconds = max(block.lease_seconds, seconds)
                return Reservation(block, usd_micros)
            refused = self._refused.get((*budget, key_limit, self._configs.current.global_monthly_budget_usd_micros))
            if refused is not None and refused[0] > time.monotonic():
                raise OverBudget(refused[1])
            holding = self._holding.get(budget)
            if holding is None or holding.done():
                # (Done: the block it held was drawn on by the calls that waited with this one.)
                holding = asyncio.ensure_future(self._hold_block(budget, usd_micros, seconds, key_limit))
                self._holding[budget] = holding
                holding.add_done_callback(lambda done: self._held(budget, done))
            # Shielded: the block is held for every waiting call, whichever of them is cancelled.
            await asyncio.shield(holding)

    def _held(self, budget: tuple[date, str], holding: asyncio.Future[None]) -> None:
        if self._holding.get(budget) is holding:
            del self._holding[budget]
        if not holding.cancelled():
            holding.exception()  # retrieved here too: every waiter may have been cancelled

    def settle(self, reservation: Reservation, usd_micros: int) -> None:
        """Counts what the call actually cost; the rest of its worst case goes back to its block.

        In memory, so that a cancelled caller cannot interrupt it: the refresher writes it to the store within a second.
        """
        block = reservation.block
        block.calls -= 1
        block.unwritten += usd_micros
        block.free += reservation.usd_micros - usd_micros

    async def refresh(self) -> None:
        """Writes back what calls spent, releases the holds of dead processes, alerts on the global budget."""
        now = datetime.now(UTC)
        month = month_start(now.date())
        await self._write_back(now)
        released = await asyncio.to_thread(self._store.release_expired, now)
        if released:
            log.warning("released expired model budget holds", extra={"fields": {"holds": released}})
        self._alerted = {mark: percent for mark, percent in self._alerted.items() if mark[0] >= month}
        counters = await asyncio.to_thread(self._store.counters, month)
        if GLOBAL in counters:
            await self._counted(month, GLOBAL, counters[GLOBAL], self._configs.current.global_monthly_budget_usd_micros)

    async def _hold_block(
        self, budget: tuple[date, str], usd_micros: int, seconds: float, key_limit: int | None
    ) -> None:
        """Holds a new block for `budget`, big enough for a call of `usd_micros`; OverBudget if not even that fits."""
        month, key_id = budget
        global_limit = self._configs.current.global_monthly_budget_usd_micros
        smaller = min(global_limit, key_limit) if key_limit is not None else global_limit
        size = max(usd_micros, min(usd_micros * BLOCK_CALLS, smaller // BLOCK_SHARE))
        expires_at = datetime.now(UTC) + timedelta(seconds=seconds + LEASE_MARGIN_SECONDS)
        while True:
            hold = Hold(new_id(), month, key_id, size)
            try:
                await asyncio.to_thread(
                    self._store.reserve, hold, expires_at, global_limit=global_limit, key_limit=key_limit
                )
                break
            except NoRoom as no_room:
                if size > usd_micros:
                    size = usd_micros  # near the budget's end: one call's worth
                    continue
                refused = (month, key_id, key_limit, global_limit)
                self._refused[refused] = (time.monotonic() + REFUSAL_SECONDS, no_room.scope)
                raise OverBudget(no_room.scope) from None
            except SQLAlchemyError as error:
                log.warning("could not reserve a model budget", extra={"fields": {"error_type": type(error).__name__}})
                raise BudgetUnavailable from error
        previous = self._open.get(budget)
        if previous is not None:
            previous.open = False  # what is left of it goes back at the next write
        block = _Block(hold, key_limit, seconds, size)
        self._open[budget] = block
        self._blocks.append(block)

    async def _write_back(self, now: datetime) -> None:
        """Writes what each block's calls spent and renews its lease; releases closed and idle blocks.

        A write that fails is tried again at the next refresh, with whatever was spent meanwhile.
        """
        month = month_start(now.date())
        idle = time.monotonic() - BLOCK_IDLE_SECONDS
        self._refused = {k: v for k, v in self._refused.items() if v[0] > time.monotonic()}
        for block in list(self._blocks):
            hold, spent = block.hold, block.unwritten
            done = block.calls == 0 and (not block.open or block.used_at < idle or hold.month < month)
            # Taken out before the write, put back if it fails: a refresh cancelled mid-write (at stop)
            # cannot have the next write count it twice.
            block.unwritten -= spent
            if done:
                block.open = False
                self._blocks.remove(block)
                if self._open.get((hold.month, hold.key_id)) is block:
                    del self._open[(hold.month, hold.key_id)]
            try:
                if done:
                    after = await asyncio.to_thread(self._store.settle, hold, spent)
                else:
                    expires_at = now + timedelta(seconds=block.lease_seconds + LEASE_MARGIN_SECONDS)
                    after, held = await asyncio.to_thread(self._store.draw, hold, spent, expires_at)
                    if not held:
                        # Another process released it (this one stalled past its lease): no call may draw on it.
                        block.open = False
            except SQLAlchemyError:
                block.unwritten += spent
                if done:
                    self._blocks.append(block)
                raise
            limits = {GLOBAL: self._configs.current.global_monthly_budget_usd_micros}
            if block.key_limit is not None:
                limits[hold.key_id] = block.key_limit
            for key_id, limit in limits.items():
                if key_id in after:
                    await self._counted(hold.month, key_id, after[key_id], limit)

    async def _counted(self, month: date, key_id: str, counters: Counters, limit: int) -> None:
        """Exports a budget's counters as just read, and logs each threshold they have crossed that no process has."""
        if month == month_start(datetime.now(UTC).date()):
            metrics.set_budget(key_id, limit, counters.spent_usd_micros)
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
