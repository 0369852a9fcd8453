"""The in-memory rate-limit storage: no thread per hit, and old entries still expire."""

from __future__ import annotations

import threading
import time

from limits import parse
from limits.strategies import MovingWindowRateLimiter

from server.rate_limits import LoopExpiredMemoryStorage


def test_hits_start_no_threads_and_expiry_still_drops_old_entries() -> None:
    storage = LoopExpiredMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    limit = parse("1000/second")
    time.sleep(0.05)  # limits starts one timer when the storage is made
    threads = threading.active_count()

    for _ in range(200):
        assert limiter.hit(limit, "key:a")

    assert threading.active_count() == threads
    assert len(storage.events[limit.key_for("key:a")]) == 200
    time.sleep(1.1)
    storage.expire()
    assert not storage.events.get(limit.key_for("key:a"))
    assert limiter.hit(limit, "key:a")  # the window is empty again
