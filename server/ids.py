"""Classification ids: ULIDs, 26 characters that sort by creation time."""

from __future__ import annotations

import os
import re
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two digits per 10 bits: 13 lookups make an id, twice as fast as base64.b32encode (pure Python in 3.11).
_DIGIT_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_TIME_LIMIT_MS = 1 << 48
ID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class _RandomBytes:
    """The operating system's random bytes, fetched 4 KiB at a time.

    Every call makes two ids (its request id and its classification id), and
    a system call for each cost about 3 % of Classify's throughput under load.
    The bytes are as random as os.urandom's; they are for ids, never secrets.
    """

    _CHUNK_BYTES = 4096

    def __init__(self) -> None:
        self._forget()
        # A forked worker must not hand out the bytes its parent will hand out too.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._offset + count > len(self._buffer):
                self._buffer, self._offset = os.urandom(self._CHUNK_BYTES), 0
            start = self._offset
            self._offset += count
            return self._buffer[start : start + count]


_random = _RandomBytes()


def new_id(now_ms: int | None = None) -> str:
    """A ULID: a 48-bit millisecond timestamp then 80 random bits, in Crockford base32.

    A time outside 1970 to 10889 is a ValueError: encoded, it would wrap around and sort wrongly.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= ms < _TIME_LIMIT_MS:
        raise ValueError(f"a ULID's time is 0 to 2**48 - 1 ms since 1970, not {ms}")
    value = (ms << 80) | int.from_bytes(_random.take(10), "big")
    # 26 digits of 5 bits are 130 bits: the value's 128 after two zero bits.
    return "".join([_DIGIT_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


def is_id(text: str) -> bool:
    return ID_PATTERN.match(text) is not None
