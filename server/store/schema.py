"""The database schema's version: upgrading it (Alembic) and checking it before serving.

The schema is changed only by the migrations in `server/store/migrations/`,
run by `triage-server migrate` (a deploy step, after a backup) and never by a
serving process: several workers and replicas starting together must not race
to create or alter tables. A server refuses to start on a schema behind its
code, and says what to run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from server.store.database import engine_url, open_database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The schema that `SQLModel.metadata.create_all` made before migrations existed (release 0.1).
BASELINE = "0001"
# Any fixed 64-bit number that other applications sharing the PostgreSQL server do not use.
_ADVISORY_LOCK = 0x7472696167655F6D  # "triage_m"


class SchemaNotCurrent(Exception):
    """The database's schema is not the one this code needs; the message says what to do."""


def _config(url: str, output: TextIO | None = None) -> Config:
    # Offline SQL goes to `output`; what the commands say as they go is not wanted.
    config = Config(stdout=io.StringIO(), output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates %; a password may contain it.
    config.set_main_option("sqlalchemy.url", engine_url(url).render_as_string(hide_password=False).replace("%", "%%"))
    return config


def head() -> str:
    """The revision this code needs."""
    revision = ScriptDirectory.from_config(_config("sqlite://")).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The database's revision; None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str) -> tuple[str | None, str]:
    """Upgrades the database at `url` to the head revision; (revision before, revision after).

    A database made before migrations existed (its tables, no version) is
    taken as the baseline and upgraded from there.
    """
    engine = open_database(url)
    try:
        config = _config(url)
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two migrations started together (a deploy job and an operator) take turns:
                # the second waits here, then finds the schema current.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
            config.attributes["connection"] = connection
            before = MigrationContext.configure(connection).get_current_revision()
            if before is None and inspect(connection).has_table("audit_events"):
                command.stamp(config, BASELINE)
                before = BASELINE
            command.upgrade(config, "head")
        return before, head()
    finally:
        engine.dispose()


def upgrade_sql(url: str, output: TextIO, since: str | None = None) -> None:
    """Writes the SQL that upgrades a database at `since` (default: empty) to head, without connecting."""
    config = _config(url, output)
    command.upgrade(config, f"{since}:head" if since else "head", sql=True)


def require_current(engine: Engine) -> None:
    """SchemaNotCurrent unless the database is at the head revision."""
    found, needed = current(engine), head()
    if found == needed:
        return
    where = make_url(engine.url).render_as_string(hide_password=True)
    if found is None:
        state = "has no schema version (it is empty, or older than migrations)"
    elif found in _known():
        state = f"is at schema revision {found}, behind this code's {needed}"
    else:
        raise SchemaNotCurrent(
            f"the database {where} is at schema revision {found}, which this code does not know: "
            f"it was migrated by a newer release; run that release, or restore the backup taken before it"
        )
    raise SchemaNotCurrent(
        f"the database {where} {state}; run `triage-server migrate` (with the same TRIAGE_DATABASE_URL) "
        "after taking a backup, then start the server again"
    )


def _known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config("sqlite://")).walk_revisions()}
