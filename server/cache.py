"""The response cache: a classification already made for the same case and configuration.

Keyed by an HMAC of the canonical case (every field but the caller's case_ref,
serialized deterministically) with the configuration version and the ruleset
version, so any change of either misses. A hit costs nothing: it is answered
with a new classification id, recorded in the audit log as a hit, and makes
no model call. In process (an LRU with a TTL) by default; in Redis, shared by
every process, when TRIAGE_REDIS_URL is set. The cached classification quotes
the complaint in its findings, so entries live only `ttl_seconds` and a
Redis holding them must be treated like the database.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict

import redis.asyncio
from redis.exceptions import RedisError

from server import metrics
from triage.v1 import case_pb2

log = logging.getLogger("triage.cache")

_PREFIX = "triage:classification:"


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
        self._redis = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.25) if redis_url else None

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl > 0

    async def get(self, key: str) -> bytes | None:
        value = await self._get(key)
        metrics.CACHE_LOOKUPS.labels("hit" if value is not None else "miss").inc()
        return value

    async def _get(self, key: str) -> bytes | None:
        if self._redis is not None:
            try:
                value = await self._redis.get(_PREFIX + key)
            except RedisError as error:
                log.warning("cache unavailable", extra={"fields": {"error_type": type(error).__name__}})
                return None
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
            try:
                await self._redis.set(_PREFIX + key, value, px=int(self._ttl * 1000))
            except RedisError as error:
                log.warning("cache unavailable", extra={"fields": {"error_type": type(error).__name__}})
            return
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
