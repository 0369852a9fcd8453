"""The rate limit a call reports: the `x-ratelimit-*` headers (trailers on an error), typed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The caller's tightest limit as of one call: `limit` calls per window, `remaining` of them left, and
    `reset_seconds` until the window frees a call (after a refusal: when to try again)."""

    limit: int
    remaining: int
    reset_seconds: int

    @classmethod
    def from_metadata(cls, *metadata: Iterable[tuple[str, str | bytes]] | None) -> RateLimit | None:
        """The rate limit in the first of the given metadata (headers, trailers) that has all three; else None."""
        for pairs in metadata:
            found = {key: value for key, value in pairs or () if key in _HEADERS and isinstance(value, str)}
            try:
                return cls(*(int(found[name]) for name in _HEADERS))
            except (KeyError, ValueError):
                continue
        return None
