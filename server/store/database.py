"""Opens the database: SQLite with WAL and full fsync, or PostgreSQL via psycopg 3."""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
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


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()
