"""Health follows the audit store: Classify and Explain are NOT_SERVING while their records cannot be committed.

The PostgreSQL server here is this test's own, started in a temporary
directory, because the test stops it (TEST_POSTGRES_URL's is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from server.app import SERVICE_NAMES, TriageServer
from server.calls import Role
from server.config import Settings
from server.store import schema
from tests.conftest import issue_test_key
from tests.support import eventually, make_case
from triage_client import AsyncTriageClient, Unavailable

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CLASSIFY, EXPLAIN, ADMIN = SERVICE_NAMES
_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL cluster that a test may stop and start."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        line = " ".join(command)
        # As root, the server must run as the postgres user (as .ci/start-postgres does).
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", line] if os.getuid() == 0 else ["bash", "-c", line]
        subprocess.run(argv, check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(str(_BINARIES[-1] / "pg_ctl"), "-D", str(self.directory / "data"), "-l",
                  str(self.directory / "server.log"), "-w", "-o", f"'{options}'", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(_BINARIES[-1] / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not _BINARIES:
        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql")
    directory = Path(tempfile.mkdtemp(prefix="triage-health-pg-"))
    if os.getuid() == 0:
        shutil.chown(directory, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    postgres = OwnPostgres(directory, port)
    postgres._run(str(_BINARIES[-1] / "initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", "postgres",
                  "--no-sync")  # fmt: skip
    postgres.start()
    try:
        schema.upgrade(postgres.url)
        yield postgres
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _health(client: AsyncTriageClient) -> dict[str, int]:
    return {name: await client.health(name) for name in ("", CLASSIFY, EXPLAIN, ADMIN)}


@pytest.mark.timeout(120)
async def test_classify_and_explain_are_not_serving_while_postgresql_is_down(
    settings: Settings, own_postgres: OwnPostgres
) -> None:
    server = TriageServer(settings.model_copy(update={"database_url": own_postgres.url, "audit_probe_seconds": 0.2}))
    await server.start()
    try:
        key = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            first = await client.classify(make_case("cough", "30y"))
            assert await _health(client) == dict.fromkeys(("", CLASSIFY, EXPLAIN, ADMIN), SERVING)

            await asyncio.to_thread(own_postgres.stop)
            with pytest.raises(Unavailable):
                await client.classify(make_case("CP", "67y"))
            # Load balancers are told at once; the admin service (key management, reads) is not audited.
            assert await _health(client) == {"": NOT_SERVING, CLASSIFY: NOT_SERVING, EXPLAIN: NOT_SERVING,
                                             ADMIN: SERVING}  # fmt: skip

            await asyncio.to_thread(own_postgres.start)

            async def serving_again() -> bool:
                return (await _health(client))[CLASSIFY] == SERVING

            # The store is probed while it is down: no call is needed to find it back.
            await eventually(serving_again, within_seconds=10)
            assert await _health(client) == dict.fromkeys(("", CLASSIFY, EXPLAIN, ADMIN), SERVING)
            second = await client.classify(make_case("CP", "67y"))
            audited = [e.classification_id async for e in client.iter_audit_events()]
    finally:
        await server.stop(grace_seconds=0)

    assert audited == sorted([first.classification_id, second.classification_id])
