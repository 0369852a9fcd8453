"""A database from before key ids (revision 0003), holding data, upgrades and works under a rotated secret ring."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr
from sqlalchemy import Engine, text

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.secret import load_secret_ring, secret_id
from server.store import chain, schema
from server.store.database import open_database
from tests.conftest import issue_test_key
from tests.support import downgrade, eventually, make_case
from triage_client import AsyncTriageClient

CASE = make_case("chest pain", "60y")


def _secret_ids(engine: Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text(f"SELECT secret_key_id FROM {table}")).scalars())


async def test_keys_and_chains_from_revision_0003_work_under_a_rotated_ring(empty_url: str, settings: Settings) -> None:
    await asyncio.to_thread(schema.upgrade, empty_url)
    first = settings.model_copy(update={"database_url": empty_url})
    server = TriageServer(first)
    await server.start()
    try:
        key = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            before = await client.classify(CASE)
    finally:
        await server.stop(grace_seconds=0)
    # The rows as revision 0003 kept them: no secret ids.
    await asyncio.to_thread(downgrade, empty_url, "0003")
    await asyncio.to_thread(schema.upgrade, empty_url)
    engine = open_database(empty_url)
    try:
        assert _secret_ids(engine, "api_keys") == [""]
        assert _secret_ids(engine, "audit_writers") == [""]

        # Rotated: a new active secret, the old one verify-only.
        rotated = first.model_copy(
            update={"secret_key": SecretStr("rotated-secret"), "secret_keys_verify_only": SecretStr("test-secret")}
        )
        server = TriageServer(rotated)
        await server.start()
        try:
            async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
                after = await client.classify(CASE)
                assert after.esi_level == before.esi_level

            async def rehashed() -> bool:
                return _secret_ids(engine, "api_keys") == [secret_id(b"rotated-secret")]

            await eventually(rehashed, within_seconds=5)
        finally:
            await server.stop(grace_seconds=0)

        # The old chain (its secret found in the ring) and the new one (under the new secret) both verify.
        assert _secret_ids(engine, "audit_writers") == sorted(["", secret_id(b"rotated-secret")])
        verified = chain.verify_database(engine, load_secret_ring(rotated))
        assert (verified.records, verified.writers, verified.problems) == (2, 2, [])
        # Without the old secret, its chain is named, not silently skipped.
        retired = rotated.model_copy(update={"secret_keys_verify_only": None})
        verified = chain.verify_database(engine, load_secret_ring(retired))
        assert [problem.classification_id for problem in verified.problems] == [before.classification_id]
    finally:
        engine.dispose()
