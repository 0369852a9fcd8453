"""Classification and request ids: ULIDs that never repeat, also across forked workers."""

from __future__ import annotations

import os

import pytest

from server.ids import is_id, new_id


def test_ids_made_in_the_same_millisecond_are_distinct_and_well_formed() -> None:
    ids = [new_id(1_700_000_000_000) for _ in range(10_000)]

    assert len(set(ids)) == len(ids)
    assert all(is_id(i) for i in ids)


def test_ids_sort_by_time() -> None:
    assert new_id(1_700_000_000_000) < new_id(1_700_000_000_001)


def test_an_id_begins_with_its_time_in_the_ulid_specs_encoding() -> None:
    # The specification's example: 1469918176385 ms is 01ARYZ6S41; the largest time is 7ZZZZZZZZZ.
    assert new_id(1_469_918_176_385)[:10] == "01ARYZ6S41"
    assert new_id(2**48 - 1)[:10] == "7ZZZZZZZZZ"
    assert new_id(0)[:10] == "0" * 10


@pytest.mark.parametrize("ms", [-1, 2**48, 2**50])
def test_a_time_a_ulid_cannot_hold_is_refused_not_wrapped(ms: int) -> None:
    # Wrapped, a time before 1970 would sort after every real id (and a purge cutoff would delete them all).
    with pytest.raises(ValueError, match="ULID"):
        new_id(ms)


def test_a_forked_worker_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the parent has random bytes in hand when it forks
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, " ".join(new_id(1) for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    parent_ids = {new_id(1) for _ in range(100)}
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = set(pipe.read().decode().split())
    os.waitpid(child, 0)

    assert len(child_ids) == 100
    assert not parent_ids & child_ids
