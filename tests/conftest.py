"""Fixtures: a real server on 127.0.0.1:0 with its own SQLite file, and clients for it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.esi.engine import RulesEngine
from server.identity.api_keys import issue_key
from server.secret import load_secret_ring
from server.store import schema
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from tests.fake_llm import FakeLLM, start_fake_llm
from tests.redis_server import RedisServer, redis_available
from tests.support import migrated_sqlite
from triage_client import AsyncTriageClient

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "")


@pytest.fixture(scope="session")
def engine() -> RulesEngine:
    return RulesEngine()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        database_url=migrated_sqlite(tmp_path / "triage.db"),
        secret_key="test-secret",  # type: ignore[arg-type]
        shutdown_grace_seconds=2.0,
        # ESI as published at D, so that tests of the service see ESI 2 for danger-zone vitals.
        danger_zone_policy="up_triage",
        # Generous limits: tests of the limits set their own on a key.
        rate_limit_clinician="10000/second",
        rate_limit_service="10000/second",
        rate_limit_admin="10000/second",
    )


@pytest.fixture
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the PostgreSQL server named by TEST_POSTGRES_URL; drops them afterwards."""
    if not POSTGRES_URL:
        if os.environ.get("TEST_REQUIRE_POSTGRES"):
            pytest.fail("TEST_POSTGRES_URL is not set but TEST_REQUIRE_POSTGRES is")
        pytest.skip("no PostgreSQL server: set TEST_POSTGRES_URL (.ci/run does)")
    admin = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def create() -> str:
        name = f"triage_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_postgres_url(new_postgres_database: Callable[[], str]) -> str:
    """A new, empty database on the test PostgreSQL server."""
    return new_postgres_database()


@pytest.fixture
def postgres_url(empty_postgres_url: str) -> str:
    """A new database on the test PostgreSQL server, migrated as `triage-server migrate` does."""
    schema.upgrade(empty_postgres_url)
    return empty_postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database (no schema) of each kind the store supports: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, migrated database of each kind the store supports: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path / "store.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TriageServer]:
    server = TriageServer(settings)
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


@pytest.fixture
async def keys(server: TriageServer) -> dict[Role, str]:
    """A key per role, made directly in the server's database as `triage-server keys create` does."""
    return {role: await issue_test_key(server, role) for role in Role}


async def issue_test_key(server: TriageServer, role: Role, **options: Any) -> str:
    engine = open_database(server.settings.database_url)
    try:
        secret = load_secret_ring(server.settings).active
        store = ApiKeyStore(engine)
        issued = await asyncio.to_thread(issue_key, store, secret, name=f"test-{role.value}", role=role, **options)
    finally:
        engine.dispose()
    return issued.secret


@pytest.fixture
async def client(server: TriageServer, keys: dict[Role, str]) -> AsyncIterator[AsyncTriageClient]:
    """A client with the admin role, which may call everything."""
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.ADMIN]) as client:
        yield client


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server of the test's own."""
    redis_available()
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def redis_backed(settings: Settings, redis_server: RedisServer) -> AsyncIterator[TriageServer]:
    """A server with Redis for the rate limits alone (no cache, which would use it too)."""
    server = TriageServer(settings.model_copy(update={"redis_url": redis_server.url, "cache_ttl_seconds": 0}))
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


KeysFor = Callable[[TriageServer], Awaitable[str]]


@pytest.fixture
def keys_for() -> KeysFor:
    """Makes an admin key for a server a test starts itself."""

    async def make(server: TriageServer) -> str:
        return await issue_test_key(server, Role.ADMIN)

    return make


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A real chat-completions server on 127.0.0.1:0; tests plan its replies."""
    fake, http = start_fake_llm()
    yield fake
    http.shutdown()
    http.server_close()
