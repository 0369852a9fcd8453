"""Fixtures: a real server on 127.0.0.1:0 with its own SQLite file, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import TriageServer
from server.config import Settings
from server.esi.engine import RulesEngine
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
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TriageServer]:
    server = TriageServer(settings)
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


@pytest.fixture
async def client(server: TriageServer) -> AsyncIterator[AsyncTriageClient]:
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key="") as client:
        yield client
