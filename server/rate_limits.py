"""Rate limits per caller, counted by the `limits` library in memory or in Redis.

Limits are written as `limits` parses them ("20/day", "10/second;1000/hour").
A call is counted against every limit of its caller in turn and refused at
the first one that is spent. The moving-window strategy makes the count
exact: in memory it runs under a lock per key, in Redis as one Lua script, so
several server processes sharing Redis share one exact count.

If Redis fails or hangs the service keeps answering: Redis is behind a
circuit breaker, and while it is open counting falls back to this process's
memory at once (each process then allows the full limit, so the total is
looser); the change is logged and reported through `on_degraded`, and Redis
is probed until it answers again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from server.breaker import CircuitBreaker

# A Redis that stalls must not stall calls: give up quickly, and count locally for a while.
_REDIS_TIMEOUT_SECONDS = 0.25
_REDIS_OPEN_SECONDS = 2.0
# Failed Redis calls in a row before counting moves into the process: one slow answer on a busy
# machine should not split a limit shared by replicas; three still cost a hung Redis under a second.
REDIS_FAILURES_TO_OPEN = 3
_EXPIRY_INTERVAL_SECONDS = 1.0


class LoopExpiredMemoryStorage(MemoryStorage):
    """limits' in-memory storage, without its expiry thread.

    Under load it starts a threading.Timer every 10 ms to drop old entries,
    from the event loop; that cost 7 % of Classify throughput (measured with
    interleaved runs). The rate limiter expires entries once a second instead.
    The hook overridden here is private to limits (pinned in constraints.txt);
    tests/unit/test_rate_limits.py fails if it stops working.
    """

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the name limits calls
        return None

    def expire(self) -> None:
        """Drops the entries that have left every window."""
        getattr(self, "_MemoryStorage__expire_events")()  # noqa: B009 - private to limits; see above


@lru_cache(maxsize=1024)
def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """The limits in `text`; ValueError with the reason when it does not parse."""
    items = tuple(parse_many(text))
    if not items:
        raise ValueError(f"{text!r} names no limit; write it like 20/day or 10/second;1000/hour")
    return items


# A rate limit allows at most a billion calls in a window of at most a year: enough for any policy, and
# small enough that the counters and the RetryInfo it produces stay in range. 0 calls refuses every call.
MAX_RATE_LIMIT_CALLS = 1_000_000_000
MAX_RATE_LIMIT_WINDOW_SECONDS = 366 * 24 * 3600


def rate_limit_problem(text: str) -> str | None:
    """What is wrong with a rate limit as written ("20/day", "10/second;1000/hour"); None when it is fine."""
    try:
        items = parse_limits(text)
    except ValueError:
        return "must read like 20/day or 10/second;1000/hour"
    for item in items:
        if item.amount > MAX_RATE_LIMIT_CALLS:
            return f"must allow at most {MAX_RATE_LIMIT_CALLS:,} calls per window; got {item.amount}"
        if item.get_expiry() > MAX_RATE_LIMIT_WINDOW_SECONDS:
            return f"a window must be at most a year; got {item.multiples} {item.GRANULARITY.name}s"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of counting one call, and what to tell the caller about the tightest limit."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    # The limit as written ("20 per 1 day"), for the refusal's QuotaFailure.
    description: str


class RateLimiter:
    """Counts calls per subject against their limits, in Redis when configured."""

    def __init__(self, redis_url: str | None, on_degraded: Callable[[bool], None] = lambda _: None) -> None:
        self._storage = LoopExpiredMemoryStorage()
        self._memory = MovingWindowRateLimiter(self._storage)
        self._expiry: asyncio.Task[None] | None = None
        self._shared: AsyncMovingWindowRateLimiter | None = None
        self._breaker: CircuitBreaker | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        if redis_url:
            # Our own pool, so that close() can release its connections.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                redis_url, socket_timeout=_REDIS_TIMEOUT_SECONDS, socket_connect_timeout=_REDIS_TIMEOUT_SECONDS
            )
            storage = RedisStorage(
                _async_url(redis_url),
                implementation="redispy",
                wrap_exceptions=True,
                connection_pool=self._pool,  # type: ignore[arg-type]  # limits passes it on to redis
            )
            self._shared = AsyncMovingWindowRateLimiter(storage)
            self._breaker = CircuitBreaker(
                "redis_rate_limit",
                failure_threshold=REDIS_FAILURES_TO_OPEN,
                open_seconds=_REDIS_OPEN_SECONDS,
                fallback="rate limits are counted in this process",
                probe=storage.check,
                on_change=on_degraded,
            )

    async def hit(self, subject: str, limits_text: str) -> Decision:
        """Counts one call for `subject`; the decision says whether it may proceed."""
        items = parse_limits(limits_text)
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_forever())
        if self._shared is not None and self._breaker is not None and self._breaker.allow():
            try:
                decision = await self._hit_shared(self._shared, subject, items)
            except StorageError as error:
                self._breaker.failed(error.__cause__ or error)
            else:
                self._breaker.succeeded()
                return decision
        return self._hit_memory(subject, items)

    def _hit_memory(self, subject: str, items: tuple[RateLimitItem, ...]) -> Decision:
        # Synchronous: microseconds under a lock, with no task or thread per call.
        decisions = []
        for item in items:
            allowed = self._memory.hit(item, subject)
            decisions.append(_decision(item, allowed, self._memory.get_window_stats(item, subject)))
            if not allowed:
                break
        return _tightest(decisions)

    async def _hit_shared(
        self, limiter: AsyncMovingWindowRateLimiter, subject: str, items: tuple[RateLimitItem, ...]
    ) -> Decision:
        decisions = []
        for item in items:
            allowed = await limiter.hit(item, subject)
            decisions.append(_decision(item, allowed, await limiter.get_window_stats(item, subject)))
            if not allowed:
                break
        return _tightest(decisions)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_INTERVAL_SECONDS)
            self._storage.expire()

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._breaker is not None:
            await self._breaker.close()
        if self._pool is not None:
            await self._pool.aclose()


def _decision(item: RateLimitItem, allowed: bool, stats: WindowStats) -> Decision:
    return Decision(
        allowed=allowed,
        limit=item.amount,
        remaining=max(stats.remaining, 0),
        reset_seconds=max(math.ceil(stats.reset_time - time.time()), 0),
        description=str(item),
    )


def _tightest(decisions: list[Decision]) -> Decision:
    """The refusal if there is one (it is last), else the limit with the fewest calls left."""
    if not decisions[-1].allowed:
        return decisions[-1]
    return min(decisions, key=lambda d: d.remaining)


def _async_url(url: str) -> str:
    """limits wants its asyncio Redis URLs spelled async+redis://."""
    return url if url.startswith("async+") else f"async+{url}"
