"""Classification ids: ULIDs, 26 characters that sort by creation time."""

from __future__ import annotations

import base64
import os
import re
import time

_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")
ID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_id(now_ms: int | None = None) -> str:
    """A ULID: a 48-bit millisecond timestamp then 80 random bits, in Crockford base32."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    # 26 digits of 5 bits are 130 bits: the value's 128 after two zero bits. Shifted into
    # 17 bytes, the first 26 digits of the standard base32 encoding are exactly those.
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_CROCKFORD).decode()


def is_id(text: str) -> bool:
    return ID_PATTERN.match(text) is not None
