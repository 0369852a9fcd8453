"""Backup while serving and restore into a fresh server: the drill an on-call person would run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.secret import load_secret_ring
from server.store import backup, chain, schema
from server.store.backup import BackupError
from server.store.database import open_database
from tests.conftest import issue_test_key
from tests.support import make_case, migrated_sqlite
from triage_client import AsyncTriageClient

LOAD_CALLERS = 8


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[bool], str]:
    """Makes databases of one kind: migrated (True) or empty (False)."""
    counter = iter(range(100))

    def make(migrated: bool) -> str:
        if request.param == "sqlite":
            path = tmp_path / f"db-{next(counter)}.sqlite"
            return migrated_sqlite(path) if migrated else f"sqlite:///{path}"
        url: str = request.getfixturevalue("new_postgres_database")()
        if migrated:
            schema.upgrade(url)
        return url

    return make


async def test_a_backup_taken_under_load_restores_into_a_fresh_server(
    settings: Settings, new_database: Callable[[bool], str], tmp_path: Path
) -> None:
    source = settings.model_copy(update={"database_url": new_database(True)})
    server = TriageServer(source)
    await server.start()
    acknowledged: list[str] = []
    stop, loaded = asyncio.Event(), asyncio.Event()
    try:
        key = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:

            async def keep_classifying(caller: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    case = make_case("chest pain", "60y", case_ref=f"drill-{caller}-{n}")
                    acknowledged.append((await client.classify(case)).classification_id)
                    if len(acknowledged) >= 50:
                        loaded.set()

            load = [asyncio.create_task(keep_classifying(i)) for i in range(LOAD_CALLERS)]
            await loaded.wait()
            before_backup = set(acknowledged)
            copied = await asyncio.to_thread(backup.backup, source.database_url, tmp_path / "triage.backup")
            during_backup = len(acknowledged) - len(before_backup)
            stop.set()
            await asyncio.gather(*load)
    finally:
        await server.stop(grace_seconds=0)

    assert copied.audit_records >= len(before_backup)
    assert copied.schema_revision == schema.head()

    restored = source.model_copy(update={"database_url": new_database(False)})
    back = await asyncio.to_thread(backup.restore, tmp_path / "triage.backup", restored.database_url)
    assert back.audit_records >= copied.audit_records
    fresh = TriageServer(restored)
    await fresh.start()
    try:
        # The same key works: its hash is in the backup, the secret was restored apart from it.
        async with AsyncTriageClient(f"127.0.0.1:{fresh.port}", api_key=key) as client:
            ids = {event.classification_id async for event in client.iter_audit_events()}
            await client.classify(make_case("ankle sprain", "30y"))
    finally:
        await fresh.stop(grace_seconds=0)
    assert before_backup <= ids
    assert len(ids) == back.audit_records
    engine = open_database(restored.database_url)
    try:
        verified = chain.verify_database(engine, load_secret_ring(restored))
    finally:
        engine.dispose()
    assert (verified.records, verified.problems) == (len(ids) + 1, [])
    assert during_backup > 0, "the load should have gone on while the backup ran"


async def test_restore_refuses_a_database_that_is_not_empty(
    new_database: Callable[[bool], str], tmp_path: Path
) -> None:
    url = new_database(True)
    await asyncio.to_thread(backup.backup, url, tmp_path / "one.backup")

    with pytest.raises(BackupError, match="not empty"):
        backup.restore(tmp_path / "one.backup", url)
    with pytest.raises(BackupError, match="never overwrites"):
        backup.backup(url, tmp_path / "one.backup")
    with pytest.raises(BackupError, match="no such backup"):
        backup.restore(tmp_path / "missing.backup", new_database(False))
