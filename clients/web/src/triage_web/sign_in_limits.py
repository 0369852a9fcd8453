"""Sign-in attempts per client address, counted by the `limits` library (a moving window, per process).

The address is personal data: it is counted under a keyed hash, never as itself.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time

from limits import parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter


class SignInLimiter:
    """Counts sign-in attempts; refuses one over any of the limits."""

    def __init__(self, limits: str, secret: bytes) -> None:
        self._limits = parse_many(limits)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._secret = secret

    async def attempt(self, address: str) -> float | None:
        """Counts an attempt from `address`: None when allowed, else the seconds until the next one is."""
        key = hmac.new(self._secret, address.encode(), hashlib.sha256).hexdigest()[:32]
        for item in self._limits:
            if not await self._limiter.hit(item, "sign-in", key):
                stats = await self._limiter.get_window_stats(item, "sign-in", key)
                return max(1.0, math.ceil(stats.reset_time - time.time()))
        return None
