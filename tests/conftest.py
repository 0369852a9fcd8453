"""Fixtures: a real server on 127.0.0.1:0 with its own SQLite file, and clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.esi.engine import RulesEngine
from server.identity.api_keys import issue_key
from server.secret import load_server_secret
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from tests.fake_llm import FakeLLM, start_fake_llm
from tests.redis_server import RedisServer, redis_available
from triage_client import AsyncTriageClient


@pytest.fixture(scope="session")
def engine() -> RulesEngine:
    return RulesEngine()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        database_url=f"sqlite:///{tmp_path / 'triage.db'}",
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
        secret = load_server_secret(server.settings)
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
