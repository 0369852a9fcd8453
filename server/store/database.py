"""Opens the database (SQLite with WAL and full fsync, or PostgreSQL via psycopg 3) and lets it go at stop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import URL, Engine, QueuePool, create_engine, event
from sqlalchemy.engine import make_url

_SQLITE_PRAGMAS = (
    # Readers never block the writer, and the writer never blocks readers.
    "PRAGMA journal_mode=WAL",
    # FULL: a committed transaction survives power loss (NORMAL would not in WAL).
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
)


def engine_url(url: str) -> URL:
    """`url` with the driver this service uses (psycopg 3 for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def open_database(url: str) -> Engine:
    """The engine; the schema is made and changed only by `server.store.schema.upgrade`."""
    parsed = engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    return engine


async def release(engine: Engine, *, within_seconds: float = 5.0) -> None:
    """Closes the engine's connections, once the worker threads still using some have given them back.

    A call or refresh cancelled at stop leaves its thread running with a connection; closed from under
    it, the connection would go back to a discarded pool, unclosed (on PostgreSQL, an open session until
    the process ends). A thread stuck longer than `within_seconds` (a hung database) is not waited for.
    """
    pool = engine.pool
    deadline = time.monotonic() + within_seconds
    # Polled: the pool's check-ins happen on worker threads, and this runs once, at stop.
    while isinstance(pool, QueuePool) and pool.checkedout() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()
