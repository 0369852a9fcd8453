"""Backing up the database while it serves, and restoring a backup into an empty database.

SQLite: the online backup API copies a consistent snapshot while the server
keeps writing (WAL readers never block the writer). PostgreSQL: pg_dump's
custom format (one consistent snapshot, restored by pg_restore in one
transaction); point-in-time recovery with WAL archiving is the DBA's path and
is described in docs/data.md. Neither backup holds the server secret or the
encryption key: they are backed up apart from the data, and restored first.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, func, inspect, select

from server.store import schema
from server.store.database import engine_url, open_database
from server.store.models import AuditEvent


class BackupError(Exception):
    """A backup or restore that cannot be done as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Copied:
    """What a backup or restore copied: audit records (for pg_dump, at least), the schema revision, the time taken."""

    audit_records: int
    schema_revision: str | None
    seconds: float


def backup(url: str, destination: Path) -> Copied:
    """Writes a consistent copy of the database at `url` to `destination` (which must not exist)."""
    if destination.exists():
        raise BackupError(f"{destination} exists; a backup never overwrites one")
    started = time.monotonic()
    parsed = engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_copy(_sqlite_path(parsed), destination)
        return _describe(f"sqlite:///{destination}", started)
    # pg_dump's snapshot is taken as it starts: it holds at least what was there before.
    before = _describe(url, started)
    _run(["pg_dump", "--format=custom", "--no-owner", f"--file={destination}"], parsed)
    return Copied(before.audit_records, before.schema_revision, time.monotonic() - started)


def restore(source: Path, url: str) -> Copied:
    """Loads the backup at `source` into the empty database at `url`."""
    if not source.is_file():
        raise BackupError(f"{source}: no such backup")
    started = time.monotonic()
    parsed = engine_url(url)
    engine = open_database(url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        where = parsed.render_as_string(hide_password=True)
        raise BackupError(f"{where} is not empty ({len(tables)} tables); restore into a new, empty database")
    if parsed.get_backend_name() == "sqlite":
        _sqlite_copy(source, _sqlite_path(parsed))
    else:
        _run(["pg_restore", "--single-transaction", "--no-owner", "--exit-on-error", str(source)], parsed)
    return _describe(url, started)


def _describe(url: str, started: float) -> Copied:
    engine = open_database(url)
    try:
        with engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        revision = schema.current(engine)
    finally:
        engine.dispose()
    return Copied(audit_records=count, schema_revision=revision, seconds=time.monotonic() - started)


def _sqlite_copy(source: Path, destination: Path) -> None:
    """SQLite's online backup: a snapshot of `source` even while another process writes it."""
    if not source.is_file():
        raise BackupError(f"{source}: no such database")
    partial = destination.with_name(destination.name + ".partial")
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    writer = sqlite3.connect(partial)
    try:
        reader.backup(writer)
        writer.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        writer.close()
        reader.close()
    # Renamed only when complete: a backup interrupted half-way is never mistaken for one.
    partial.rename(destination)


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory database has nothing to back up")
    return Path(url.database)


def _run(command: list[str], url: URL) -> None:
    """Runs pg_dump or pg_restore on the database at `url`; its password goes in the environment, not argv."""
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed (Debian: postgresql-client)")
    database = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    environment = os.environ | ({"PGPASSWORD": str(url.password)} if url.password else {})
    done = subprocess.run(
        [*command, f"--dbname={database}"], capture_output=True, text=True, check=False, env=environment
    )
    if done.returncode != 0:
        raise BackupError(f"{command[0]} failed: {done.stderr.strip()}")
