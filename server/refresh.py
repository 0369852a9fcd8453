"""Keeping a process's copy of shared state fresh: refresh now, then every few seconds.

API keys, the runtime configuration and monthly spending are read from the
database by every process. A failed refresh keeps the last good copy, logs
the error's type and is tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("triage.refresh")


class Refresher:
    def __init__(self, refresh: Callable[[], Awaitable[None]], *, interval_seconds: float, what: str) -> None:
        self._refresh = refresh
        self._interval = interval_seconds
        self._what = what
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Refreshes once (a failure here is the caller's), then keeps refreshing in the background."""
        await self._refresh()
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        """Stops refreshing; returns once a refresh under way has been cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._refresh()
            except Exception as error:  # noqa: BLE001 - keep the last good copy and try again
                log.warning(f"could not refresh {self._what}", extra={"fields": {"error_type": type(error).__name__}})
