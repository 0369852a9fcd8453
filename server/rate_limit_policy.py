"""What a rate limit may be, beyond parsing: bounds that keep its counters and RetryInfo in range.

Shared by the runtime configuration's role defaults and the API keys' own limits.
(It belongs beside parse_limits in server/rate_limits.py; kept apart while that module is changed elsewhere.)
"""

from __future__ import annotations

from server.rate_limits import parse_limits

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
