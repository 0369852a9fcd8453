"""The shared budget store on SQLite and PostgreSQL: atomic holds, settlements, leases, months, alerts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine

from server import budgets as budgets_module
from server.budgets import Budgets, OverBudget, month_start
from server.calls import LedgerEntry, Principal, Role
from server.ids import new_id
from server.runtime_config import ConfigStore, RuntimeConfigs, default_config
from server.store.budgets import GLOBAL, BudgetStore, Counters, Hold, NoRoom
from server.store.database import open_database
from server.store.usage import UsageStore

NOVEMBER = date(2026, 11, 1)
THIS_MONTH = month_start(datetime.now(UTC).date())
DECEMBER = date(2026, 12, 1)
# A lease that cannot end during the test run, however long the suite takes to reach it.
LATER = datetime.now(UTC) + timedelta(days=1)
EARLIER = datetime.now(UTC) - timedelta(seconds=1)


@pytest.fixture
def engines(database_url: str) -> Iterator[list[Engine]]:
    """Four engines on one database, each with its own connections, as four processes would have."""
    made = [open_database(database_url) for _ in range(4)]
    yield made
    for engine in made:
        engine.dispose()


@pytest.fixture
def store(engines: list[Engine]) -> BudgetStore:
    return BudgetStore(engines[0])


def hold(usd_micros: int, key_id: str = "", month: date = NOVEMBER) -> Hold:
    return Hold(new_id(), month, key_id, usd_micros)


def try_reserve(store: BudgetStore, held: Hold, *, limit: int, key_limit: int | None = None) -> str:
    """ "ok", or the scope that had no room."""
    try:
        store.reserve(held, LATER, global_limit=limit, key_limit=key_limit)
    except NoRoom as no_room:
        return no_room.scope
    return "ok"


def test_concurrent_holds_from_many_processes_never_exceed_the_limit(engines: list[Engine]) -> None:
    stores = [BudgetStore(engine) for engine in engines]
    # 200 holds of 300 at once against 10,000: exactly 33 fit, whoever asks.
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda i: try_reserve(stores[i % 4], hold(300), limit=10_000), range(200)))

    assert outcomes.count("ok") == 33
    assert outcomes.count("global") == 167
    assert stores[1].counters(NOVEMBER)[GLOBAL] == Counters(0, 33 * 300, 0)


def test_concurrent_holds_on_one_key_never_exceed_its_limit(engines: list[Engine]) -> None:
    stores = [BudgetStore(engine) for engine in engines]

    def reserve(i: int) -> str:
        key_id = "limited" if i % 2 else "other"
        return try_reserve(stores[i % 4], hold(300, key_id), limit=1_000_000, key_limit=3_000 if i % 2 else None)

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(reserve, range(100)))

    assert outcomes[1::2].count("ok") == 10
    assert outcomes[1::2].count("key") == 40
    assert outcomes[0::2] == ["ok"] * 50  # the other key has no budget of its own
    counters = stores[0].counters(NOVEMBER)
    assert (counters["limited"].reserved_usd_micros, counters["other"].reserved_usd_micros) == (3_000, 15_000)
    assert counters[GLOBAL].reserved_usd_micros == 18_000


def test_a_refused_hold_changes_nothing(store: BudgetStore) -> None:
    assert try_reserve(store, hold(600, "k"), limit=1_000, key_limit=700) == "ok"
    # Fits the global budget, not the key's: neither is charged.
    assert try_reserve(store, hold(300, "k"), limit=1_000, key_limit=700) == "key"
    # Fits the key's budget, not the global one: the key's hold is undone with it.
    assert try_reserve(store, hold(500, "k"), limit=1_000, key_limit=2_000) == "global"
    counters = store.counters(NOVEMBER)
    assert counters["k"].reserved_usd_micros == counters[GLOBAL].reserved_usd_micros == 600


def test_settling_releases_the_hold_and_counts_the_actual_cost(store: BudgetStore) -> None:
    first = hold(300, "k")
    store.reserve(first, LATER, global_limit=500, key_limit=None)
    assert try_reserve(store, hold(300, "k"), limit=500) == "global"

    after = store.settle(first, 140)

    assert after == {"k": Counters(140, 0, 0), GLOBAL: Counters(140, 0, 0)}
    assert try_reserve(store, hold(300, "k"), limit=500) == "ok"  # 140 + 300 fits 500
    assert try_reserve(store, hold(100, "k"), limit=500) == "global"


def test_the_holds_of_a_dead_process_are_released_when_their_lease_ends(engines: list[Engine]) -> None:
    dead, alive = BudgetStore(engines[0]), BudgetStore(engines[1])
    orphan = hold(400, "k")
    dead.reserve(orphan, EARLIER, global_limit=500, key_limit=None)  # its lease has already ended
    live = hold(100, "k")
    alive.reserve(live, LATER, global_limit=500, key_limit=None)

    assert alive.release_expired(datetime.now(UTC)) == 1
    assert alive.release_expired(datetime.now(UTC)) == 0
    assert alive.counters(NOVEMBER)[GLOBAL] == Counters(0, 100, 0)
    # A settlement after its lease was released counts the cost but frees nothing twice.
    assert dead.settle(orphan, 200)[GLOBAL] == Counters(200, 100, 0)
    assert alive.settle(live, 50)["k"] == Counters(250, 0, 0)


def test_drawing_on_a_hold_counts_the_spending_and_settling_frees_only_what_is_left(store: BudgetStore) -> None:
    block = hold(1_000, "k")
    store.reserve(block, LATER, global_limit=5_000, key_limit=None)

    after, held = store.draw(block, 300, LATER)

    assert held
    assert after[GLOBAL] == after["k"] == Counters(300, 700, 0)
    assert store.settle(block, 200)[GLOBAL] == Counters(500, 0, 0)  # frees the 500 left, not the 1,000 held


def test_drawing_on_a_hold_released_meanwhile_counts_the_spending_and_frees_nothing(engines: list[Engine]) -> None:
    stalled, other = BudgetStore(engines[0]), BudgetStore(engines[1])
    block = hold(1_000, "k")
    stalled.reserve(block, EARLIER, global_limit=5_000, key_limit=None)
    assert other.release_expired(datetime.now(UTC)) == 1

    after, held = stalled.draw(block, 300, LATER)

    assert not held
    assert after[GLOBAL] == Counters(300, 0, 0)


def test_a_lease_renewed_after_it_was_found_expired_is_not_released(engines: list[Engine]) -> None:
    store = BudgetStore(engines[0])
    block = hold(1_000, "k")
    store.reserve(block, EARLIER, global_limit=5_000, key_limit=None)
    found_expired = datetime.now(UTC)
    store.draw(block, 0, LATER)  # its process renews it

    store._release(block, 0, expired_before=found_expired)

    assert store.counters(NOVEMBER)[GLOBAL] == Counters(0, 1_000, 0)


async def _budgets(engine: Engine, global_limit: int) -> Budgets:
    config = default_config(
        danger_zone_policy="up_triage", rate_limits={}, global_monthly_budget_usd_micros=global_limit
    )
    configs = RuntimeConfigs(ConfigStore(engine), config)
    await configs.start()
    await configs.stop()  # the defaults are all it needs
    return Budgets(BudgetStore(engine), configs)


async def test_calls_draw_on_one_block_held_in_the_store(engines: list[Engine]) -> None:
    budgets = await _budgets(engines[0], 1_000_000)
    principal = Principal(subject="k", role=Role.SERVICE, key_id="k")

    reservations = await asyncio.gather(*(budgets.reserve(principal, 100, seconds=1) for _ in range(50)))

    store = BudgetStore(engines[1])
    assert store.counters(THIS_MONTH)[GLOBAL] == Counters(0, 6_400, 0)  # one block of 64 calls
    for reservation in reservations:
        budgets.settle(reservation, 90)
    await budgets.refresh()  # writes back what the calls spent; the block stays for the next calls
    assert store.counters(THIS_MONTH)[GLOBAL] == Counters(4_500, 1_900, 0)
    await budgets.stop()  # gives the rest back
    assert store.counters(THIS_MONTH)[GLOBAL] == Counters(4_500, 0, 0)


async def test_calls_waiting_together_for_blocks_each_get_one_or_a_refusal(engines: list[Engine]) -> None:
    """Near the end blocks hold one call each: the calls that waited for one and found it taken ask again."""
    budgets = await _budgets(engines[0], 1_000)  # blocks of one call: 1,000 / 64 is less than a call's 100

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(budgets.reserve(None, 100, seconds=1) for _ in range(20)), return_exceptions=True), 10
    )

    assert sum(not isinstance(o, BaseException) for o in outcomes) == 10
    assert sum(isinstance(o, OverBudget) for o in outcomes) == 10


@pytest.mark.timeout(10)
async def test_a_call_arriving_as_a_block_is_held_for_others_holds_its_own(engines: list[Engine]) -> None:
    """A call may run between a hold's completion and its removal from the holds in progress (a callback).

    It must not take that finished hold for one still coming: awaiting it returns at once without
    yielding to the event loop, so the process would spin there for ever.
    """
    budgets = await _budgets(engines[0], 1_000_000)
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    finished.set_result(None)  # its block already drawn on by the calls that waited for it
    budgets._holding[(THIS_MONTH, GLOBAL)] = finished

    await budgets.reserve(None, 100, seconds=1)


async def test_processes_holding_blocks_together_spend_all_of_a_budget_and_never_more(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks shrink near the end and idle ones come back: the whole budget is used, never more."""
    monkeypatch.setattr(budgets_module, "BLOCK_IDLE_SECONDS", 0.0)  # every refresh gives back unused blocks
    monkeypatch.setattr(budgets_module, "REFUSAL_SECONDS", 0.0)
    limit = 100_000  # blocks of 1,562: ten calls each, until the end
    processes = [await _budgets(engine, limit) for engine in engines]
    principal = Principal(subject="k", role=Role.SERVICE, key_id="k")
    spent = 0
    for _ in range(20):
        reservations = []
        for i in range(200):
            budgets = processes[i % len(processes)]
            with contextlib.suppress(OverBudget):
                reservations.append((budgets, await budgets.reserve(principal, 150, seconds=1)))
        if not reservations:
            break
        for budgets, reservation in reservations:
            budgets.settle(reservation, 150)  # the worst case, every time
        spent += 150 * len(reservations)
        for budgets in processes:
            await budgets.refresh()

    assert limit - 150 < spent <= limit
    assert BudgetStore(engines[0]).counters(THIS_MONTH)[GLOBAL].spent_usd_micros == spent


def test_each_month_has_its_own_counters(store: BudgetStore) -> None:
    november = hold(400, month=NOVEMBER)
    store.reserve(november, LATER, global_limit=500, key_limit=None)
    # A new month starts from nothing, while November's call is still in flight.
    assert try_reserve(store, hold(500, month=DECEMBER), limit=500) == "ok"
    # The November call settles into November, where it reserved.
    store.settle(november, 300)
    assert store.counters(NOVEMBER)[GLOBAL] == Counters(300, 0, 0)
    assert store.counters(DECEMBER)[GLOBAL] == Counters(0, 500, 0)


def test_a_months_first_hold_starts_from_the_usage_already_totalled(engines: list[Engine]) -> None:
    """An upgrade mid-month: what was spent before the budget tables existed still counts."""
    usage = UsageStore(engines[0])
    usage.add([("k", NOVEMBER + timedelta(days=3), [LedgerEntry(2, "m", 10, 1, 9_000)])])
    usage.add([("j", NOVEMBER + timedelta(days=4), [LedgerEntry(2, "m", 10, 1, 500)])])
    usage.add([("k", NOVEMBER - timedelta(days=1), [LedgerEntry(2, "m", 10, 1, 7_000)])])  # October
    store = BudgetStore(engines[1])

    assert try_reserve(store, hold(600, "k"), limit=10_000) == "global"  # 9,500 + 600
    assert try_reserve(store, hold(400, "k"), limit=10_000, key_limit=9_300) == "key"  # 9,000 + 400
    assert store.counters(NOVEMBER)["k"].spent_usd_micros == 9_000


def test_each_alert_threshold_is_marked_once(engines: list[Engine]) -> None:
    stores = [BudgetStore(engine) for engine in engines]
    stores[0].reserve(hold(10), LATER, global_limit=100, key_limit=None)

    with ThreadPoolExecutor(max_workers=4) as pool:
        marked = list(pool.map(lambda s: s.mark_alerted(NOVEMBER, GLOBAL, 50), stores))

    assert marked.count(True) == 1
    assert stores[0].mark_alerted(NOVEMBER, GLOBAL, 80)
    assert not stores[1].mark_alerted(NOVEMBER, GLOBAL, 50)


async def test_two_processes_log_each_global_alert_once(
    engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triage.budgets")
    config = default_config(danger_zone_policy="up_triage", rate_limits={}, global_monthly_budget_usd_micros=1_000)
    processes = []
    for engine in engines[:2]:
        configs = RuntimeConfigs(ConfigStore(engine), config)
        await configs.start()
        await configs.stop()  # the defaults are all it needs
        processes.append(Budgets(BudgetStore(engine), configs))
    principal = Principal(subject="k", role=Role.SERVICE, key_id="k")

    reservations = [await processes[i % 2].reserve(principal, 100, seconds=1) for i in range(10)]
    with pytest.raises(OverBudget):
        await processes[0].reserve(principal, 100, seconds=1)
    for i, reservation in enumerate(reservations):
        processes[i % 2].settle(reservation, 90)
    for budgets in processes:
        await budgets.refresh()

    alerts = [r.fields["percent"] for r in caplog.records if r.getMessage() == "budget alert"]  # type: ignore[attr-defined]
    assert sorted(alerts) == [50, 80]  # 900 of 1,000: each once over both processes


def test_budgets_of_thousands_of_dollars_fit(store: BudgetStore) -> None:
    """Micro-dollars above 2^31 (2,147 USD), which a 32-bit column would not hold."""
    big = hold(3_000_000_000, "k")
    store.reserve(big, LATER, global_limit=5_000_000_000, key_limit=4_000_000_000)
    assert try_reserve(store, hold(1_500_000_000, "k"), limit=5_000_000_000) == "ok"
    assert try_reserve(store, hold(600_000_000, "k"), limit=5_000_000_000) == "global"
    assert store.settle(big, 2_900_000_000)[GLOBAL] == Counters(2_900_000_000, 1_500_000_000, 0)
