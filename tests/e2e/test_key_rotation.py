"""Key rotation on real server processes: both rings rotate under two replicas that keep serving."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import sys
from pathlib import Path

from server.case_vault import fingerprint
from server.secret import secret_id
from tests.e2e.processes import SECRET, ServerProcess, create_key, server_environment, start_server
from tests.support import eventually, make_case
from triage_client import AsyncTriageClient

CASE = make_case("chest pain", "60y")


async def triage_server(
    directory: Path, *args: str, ring_file: bool = False, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Runs `triage-server ARGS` for the database in `directory`, with `env` added; (exit status, output).

    With `ring_file`, the server secret ring is the file in `directory`, not TRIAGE_SECRET_KEY.
    """
    environment = server_environment(directory) | (env or {})
    if ring_file:
        del environment["TRIAGE_SECRET_KEY"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, cwd=directory, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def stop(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        await server.read_log()
        assert await server.process.wait() == 0


def query(directory: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(directory / "triage.db") as connection:
        return connection.execute(sql).fetchall()


class Replicas:
    """Two server processes on one database, restarted one at a time while a caller keeps classifying."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.key = key
        self.servers: list[ServerProcess] = []
        self.serving = 0  # the replica the background caller uses
        self.failures: list[BaseException] = []
        self.classified = 0

    async def start(self, **env: str) -> None:
        self.servers = [await start_server(self.directory, **env) for _ in range(2)]

    async def roll(self, **env: str) -> None:
        """A rolling restart into `env`: each replica is stopped only while the other serves."""
        for replica in (0, 1):
            self.serving = 1 - replica
            # As Kubernetes' preStop pause (deploy/k8s): a call begun on this replica just before the switch
            # ends before SIGTERM; one that reached it as the server stopped could be cancelled by gRPC.
            await asyncio.sleep(0.5)
            await stop(self.servers[replica])
            self.servers[replica] = await start_server(self.directory, **env)
            log = self.servers[replica].log[-1]
            assert log["secret_key_id"] == secret_id((env.get("TRIAGE_SECRET_KEY") or SECRET).encode())

    async def keep_classifying(self) -> None:
        while True:
            try:
                async with AsyncTriageClient(f"127.0.0.1:{self.servers[self.serving].port}", api_key=self.key) as c:
                    await c.classify(CASE)
                    self.classified += 1
            except Exception as error:  # noqa: BLE001 - every failure is the test's finding
                self.failures.append(error)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for server in self.servers:
            await stop(server)


async def test_both_rings_rotate_while_two_replicas_serve_and_everything_old_keeps_working(tmp_path: Path) -> None:
    admin = await create_key(tmp_path, "admin", "--rate-limit", "1000/second")
    old_encryption = base64.b64encode(os.urandom(32)).decode()
    replicas = Replicas(tmp_path, admin)
    await replicas.start(TRIAGE_ENCRYPTION_KEY=old_encryption)
    caller = asyncio.create_task(replicas.keep_classifying())
    try:
        before = []
        for server in replicas.servers:
            async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=admin) as client:
                before += [(await client.classify(CASE)).classification_id for _ in range(3)]

        # 1. A new secret and a new encryption key, known everywhere before anyone writes with them.
        code, out = await triage_server(tmp_path, "secret", "rotate")
        assert code == 0
        new_secret = out.splitlines()[-1]
        code, out = await triage_server(tmp_path, "encryption-key", "new")
        assert code == 0
        new_encryption = out.splitlines()[-1]
        await replicas.roll(
            TRIAGE_SECRET_KEYS_VERIFY_ONLY=new_secret,
            TRIAGE_ENCRYPTION_KEY=old_encryption,
            TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY=new_encryption,
        )
        # 2. Activate them: the old ones only verify and decrypt.
        code, out = await triage_server(
            tmp_path,
            "secret",
            "activate",
            secret_id(new_secret.encode()),
            env={"TRIAGE_SECRET_KEYS_VERIFY_ONLY": new_secret},
        )
        assert code == 0, out
        rotated = {
            "TRIAGE_SECRET_KEY": new_secret,
            "TRIAGE_SECRET_KEYS_VERIFY_ONLY": SECRET,
            "TRIAGE_ENCRYPTION_KEY": new_encryption,
            "TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY": old_encryption,
        }
        await replicas.roll(**rotated)

        after = []
        for server in replicas.servers:
            # The API key hashed under the old secret still works, on either replica ...
            async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=admin) as client:
                after.append((await client.classify(CASE)).classification_id)
                # ... and so does every case sealed under the old encryption key.
                for classification_id in before:
                    events = [e async for e in client.explain(classification_id=classification_id)]
                    assert events[-1].classification.esi_level == 2

        # The key is rewritten under the new secret after its first use; new cases use the new key.
        async def rehashed() -> bool:
            return query(tmp_path, "SELECT DISTINCT secret_key_id FROM api_keys") == [(secret_id(new_secret.encode()),)]

        await eventually(rehashed, within_seconds=10)
        marks = ",".join(f"'{i}'" for i in after)
        sealed = query(
            tmp_path, f"SELECT DISTINCT key_fingerprint FROM stored_cases WHERE classification_id IN ({marks})"
        )
        assert sealed == [(fingerprint(base64.b64decode(new_encryption)),)]
        writers = {row[0] for row in query(tmp_path, "SELECT secret_key_id FROM audit_writers")}
        assert writers == {secret_id(SECRET.encode()), secret_id(new_secret.encode())}

        # Every chain, under either secret, verifies.
        code, out = await triage_server(tmp_path, "audit", "verify", env=rotated)
        assert code == 0, out
        assert "every chained record verifies" in out
        # The old secret still verifies chains kept for years: retiring it is refused.
        code, out = await triage_server(tmp_path, "secret", "retire", secret_id(SECRET.encode()), env=rotated)
        assert code == 1
        assert "audit chains are linked under it" in out

        # 3. The old encryption key can go once its cases are sealed under the new one.
        code, out = await triage_server(tmp_path, "encryption-key", "reencrypt", env=rotated)
        assert code == 0, out
        code, out = await triage_server(tmp_path, "encryption-key", "status", env=rotated)
        assert f"{fingerprint(base64.b64decode(old_encryption))}  decrypt-only  0 stored cases: can be removed" in out
        del rotated["TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY"]
        await replicas.roll(**rotated)
        async with AsyncTriageClient(f"127.0.0.1:{replicas.servers[0].port}", api_key=admin) as client:
            for classification_id in before:
                assert [e async for e in client.explain(classification_id=classification_id)]
    finally:
        caller.cancel()
        await replicas.stop()

    # Nobody calling noticed: the replica in use served every call through three rolling restarts.
    assert replicas.failures == []
    assert replicas.classified > 0


async def test_the_secret_commands_rotate_the_ring_file_and_retire_only_what_nothing_needs(tmp_path: Path) -> None:
    code, out = await triage_server(tmp_path, "keys", "create", "--name", "old", "--role", "service", ring_file=True)
    assert code == 0, out
    old_key = out.splitlines()[-1][4:30]
    ring = tmp_path / "triage-secret.key"
    old = secret_id(ring.read_text().strip().encode())  # generated on first use: one bare secret

    code, out = await triage_server(tmp_path, "secret", "rotate", ring_file=True)
    assert code == 0, out
    new = out.split("added server secret ")[1].split()[0]
    code, out = await triage_server(tmp_path, "secret", "activate", new, ring_file=True)
    assert code == 0, out
    code, out = await triage_server(tmp_path, "keys", "create", "--name", "new", "--role", "service", ring_file=True)
    assert code == 0, out
    assert query(tmp_path, "SELECT name, secret_key_id FROM api_keys ORDER BY key_id") == [("old", old), ("new", new)]

    code, out = await triage_server(tmp_path, "secret", "retire", old, ring_file=True)
    assert code == 1
    assert "1 API keys are hashed under it and have not been used since it was active (each is rewritten" in out
    assert old_key in out
    code, out = await triage_server(tmp_path, "secret", "retire", new, ring_file=True)
    assert (code, out.strip()) == (1, f"server secret {new} is the active one: activate another first")

    assert (await triage_server(tmp_path, "keys", "revoke", old_key, ring_file=True))[0] == 0
    code, out = await triage_server(tmp_path, "secret", "retire", old, ring_file=True)
    assert code == 0, out
    code, out = await triage_server(tmp_path, "secret", "status", ring_file=True)
    assert out.splitlines()[1:] == [f"  {new}  active       1 API keys, 0 audit chains"]


async def test_a_bad_ring_file_stops_the_start_with_one_clear_message(tmp_path: Path) -> None:
    (tmp_path / "triage-secret.key").write_text("active one\nactive two\n")
    code, out = await triage_server(tmp_path, "serve", ring_file=True)

    assert code == 2
    assert out.strip() == "triage-server: triage-secret.key has 2 active secrets; exactly one must be active"
