"""Migrations: the migrated schema is the models' schema, and old databases upgrade with their data intact."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.store import schema
from server.store.database import open_database
from server.store.schema import SchemaNotCurrent
from tests.conftest import issue_test_key
from tests.support import downgrade, make_case
from triage_client import AsyncTriageClient


@pytest.fixture
def opened(empty_url: str) -> Iterator[Engine]:
    engine = open_database(empty_url)
    yield engine
    engine.dispose()


def test_the_migrated_schema_is_the_models_schema(empty_url: str, opened: Engine) -> None:
    schema.upgrade(empty_url)

    with opened.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []
    assert schema.current(opened) == schema.head()


def test_a_server_refuses_a_database_behind_its_code_and_says_what_to_run(empty_url: str, opened: Engine) -> None:
    with pytest.raises(SchemaNotCurrent, match=r"run `triage-server migrate`"):
        schema.require_current(opened)
    schema.upgrade(empty_url)
    schema.require_current(opened)


def test_a_database_migrated_by_a_newer_release_is_named_as_such(empty_url: str, opened: Engine) -> None:
    schema.upgrade(empty_url)
    with opened.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaNotCurrent, match="newer release"):
        schema.require_current(opened)


def test_migrating_twice_changes_nothing(empty_url: str) -> None:
    assert schema.upgrade(empty_url) == (None, schema.head())
    assert schema.upgrade(empty_url) == (schema.head(), schema.head())


async def test_concurrent_migrations_take_turns(empty_url: str, opened: Engine) -> None:
    # A deploy job and an operator at once: on PostgreSQL one waits for the other's lock.
    if opened.dialect.name == "sqlite":
        pytest.skip("SQLite's embedded database is migrated by `make run` alone")
    outputs = await asyncio.gather(*(_migrate_in_a_process(empty_url) for _ in range(3)))
    assert sorted(out.split(" (")[0].split(" from")[0] for out in outputs) == [
        "migrated the schema",
        "the schema is current",
        "the schema is current",
    ]
    assert schema.current(opened) == schema.head()


async def _migrate_in_a_process(url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "migrate",
        env=os.environ | {"TRIAGE_DATABASE_URL": url}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


def test_a_database_made_before_migrations_is_adopted_as_the_baseline(empty_url: str, opened: Engine) -> None:
    # Release 0.1 made its tables with create_all; the baseline revision has the same schema.
    schema.upgrade(empty_url)
    downgrade(empty_url, schema.BASELINE)
    with opened.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("INSERT INTO config_versions VALUES (1, '{}', :at, 'ops', '')"), {"at": _NOW})

    assert schema.upgrade(empty_url) == (schema.BASELINE, schema.head())
    with opened.connect() as connection:
        assert connection.execute(text("SELECT updated_by FROM config_versions")).scalar_one() == "ops"
    assert inspect(opened).has_table("alembic_version")


_NOW = datetime(2026, 11, 1, tzinfo=UTC)


async def test_a_database_of_the_first_revision_holding_data_upgrades_and_serves_it(
    empty_url: str, opened: Engine, settings: Settings
) -> None:
    schema.upgrade(empty_url)
    first = settings.model_copy(update={"database_url": empty_url})
    server = TriageServer(first)
    await server.start()
    try:
        key = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            before = await client.classify(make_case("chest pain", "60y", case_ref="before-upgrade"))
    finally:
        await server.stop(grace_seconds=0)

    # Take the database back to the first revision's schema, keeping its rows, and upgrade it again.
    await asyncio.to_thread(downgrade, empty_url, schema.BASELINE)
    await asyncio.to_thread(schema.upgrade, empty_url)

    server = TriageServer(first)
    await server.start()
    try:
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            events = [event async for event in client.iter_audit_events()]
            after = await client.classify(make_case("chest pain", "60y", case_ref="after-upgrade"))
            assert {event.classification_id for event in events} >= {before.classification_id}
            assert [e.case_ref for e in events if e.classification_id == before.classification_id] == ["before-upgrade"]
            assert after.esi_level == before.esi_level
            keys = await client.list_api_keys()
            assert keys
    finally:
        await server.stop(grace_seconds=0)
