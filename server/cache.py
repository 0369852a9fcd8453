"""The response cache: a classification already made for the same case and configuration.

Keyed by an HMAC of the canonical case (every field but the caller's case_ref,
serialized deterministically) with the configuration version and the ruleset
version, so any change of either misses. A hit costs nothing: it is answered
with a new classification id, recorded in the audit log as a hit, and makes
no model call. In process (an LRU with a TTL) by default; in Redis, shared by
every process, when TRIAGE_REDIS_URL is set. The cached classification quotes
the complaint in its findings, so entries live only `ttl_seconds` and a
Redis holding them must be treated like the database.

Redis is behind a circuit breaker: when it fails or hangs, lookups miss and
nothing is stored, at once, until a probe finds it answering again; so a
hung Redis costs one timeout per breaker window, not one per call.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio
from redis.exceptions import RedisError

from server import metrics
from server.breaker import CircuitBreaker
from triage.v1 import case_pb2

_PREFIX = "triage:classification:"
# A Redis that stalls must not stall calls: give up quickly, and skip it for a while.
_REDIS_TIMEOUT_SECONDS = 0.25
_REDIS_OPEN_SECONDS = 2.0

T = TypeVar("T")


def cache_key(secret: bytes, case: case_pb2.TriageCase, config_version: int, ruleset_version: str) -> str:
    canonical = case_pb2.TriageCase()
    canonical.CopyFrom(case)
    canonical.case_ref = ""
    material = canonical.SerializeToString(deterministic=True) + f"|{config_version}|{ruleset_version}".encode()
    return hmac.new(secret, material, hashlib.sha256).hexdigest()


class ResponseCache:
    """Serialized classifications by cache key, in memory or in Redis."""

    def __init__(self, *, max_entries: int, ttl_seconds: float, redis_url: str | None = None) -> None:
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._redis: redis.asyncio.Redis | None = None
        self._breaker: CircuitBreaker | None = None
        if redis_url:
            self._redis = redis.asyncio.Redis.from_url(redis_url, socket_timeout=_REDIS_TIMEOUT_SECONDS)
            self._breaker = CircuitBreaker(
                "redis_cache",
                failure_threshold=1,
                open_seconds=_REDIS_OPEN_SECONDS,
                fallback="every lookup misses and nothing is cached",
                probe=self._ping,
            )

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl > 0

    async def get(self, key: str) -> bytes | None:
        value = await self._get(key)
        metrics.CACHE_LOOKUPS.labels("hit" if value is not None else "miss").inc()
        return value

    async def _get(self, key: str) -> bytes | None:
        if self._redis is not None:
            value = await self._shared(lambda shared: shared.get(_PREFIX + key))
            return value if isinstance(value, bytes) else None
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        if self._redis is not None:
            await self._shared(lambda shared: shared.set(_PREFIX + key, value, px=int(self._ttl * 1000)))
            return
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def _shared(self, command: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T | None:
        """`command`'s result from Redis; None, at once, while its circuit is open, and when it fails."""
        assert self._redis is not None
        assert self._breaker is not None
        if not self._breaker.allow():
            return None
        try:
            result = await command(self._redis)
        except RedisError as error:
            self._breaker.failed(error)
            return None
        self._breaker.succeeded()
        return result

    async def _ping(self) -> bool:
        assert self._redis is not None
        return bool(await self._redis.ping())  # type: ignore[misc]  # typed for sync and async at once

    async def close(self) -> None:
        if self._redis is not None and self._breaker is not None:
            await self._breaker.close()
            await self._redis.aclose()
