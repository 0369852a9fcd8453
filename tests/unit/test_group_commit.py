"""Group commit: callers' writes gather into batches while one commits; each caller hears its own batch's outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from server.group_commit import GroupCommit


class Disk:
    """A write that can be held mid-commit, recording the batches it committed."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.failing: set[int] = set()

    def write(self, items: Sequence[int]) -> None:
        self.release.wait(timeout=5)
        if self.failing & set(items):
            raise OSError("disk full")
        self.batches.append(list(items))


async def test_calls_that_arrive_while_a_batch_commits_share_the_next_transaction() -> None:
    disk = Disk()
    writes = GroupCommit(disk.write)
    first = asyncio.create_task(writes.submit(0))
    await asyncio.sleep(0.05)  # the first batch (one item) is committing, held
    rest = [asyncio.create_task(writes.submit(i)) for i in range(1, 100)]
    await asyncio.sleep(0)
    disk.release.set()

    await asyncio.gather(first, *rest)

    assert disk.batches == [[0], list(range(1, 100))]


async def test_batches_are_at_most_the_given_size() -> None:
    disk = Disk()
    disk.release.set()
    writes = GroupCommit(disk.write, max_batch=10)

    await asyncio.gather(*(writes.submit(i) for i in range(25)))

    assert [len(batch) for batch in disk.batches] == [10, 10, 5]
    assert sorted(i for batch in disk.batches for i in batch) == list(range(25))


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_is_written() -> None:
    disk = Disk()
    disk.failing = {3}
    writes = GroupCommit(disk.write, max_batch=5)
    calls = [asyncio.create_task(writes.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    disk.release.set()

    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert [type(o).__name__ for o in outcomes] == ["OSError"] * 5 + ["NoneType"] * 5
    assert disk.batches == [[5, 6, 7, 8, 9]]


async def test_a_caller_that_goes_away_still_has_its_item_written() -> None:
    disk = Disk()
    writes = GroupCommit(disk.write)
    call = asyncio.create_task(writes.submit(7))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    disk.release.set()

    await writes.close()

    assert disk.batches == [[7]]
