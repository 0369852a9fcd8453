"""Classification ids: ULIDs, 26 characters that sort by creation time."""

from __future__ import annotations

import os
import re
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_id(now_ms: int | None = None) -> str:
    """A ULID: a 48-bit millisecond timestamp then 80 random bits, in Crockford base32."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def is_id(text: str) -> bool:
    return ID_PATTERN.match(text) is not None
