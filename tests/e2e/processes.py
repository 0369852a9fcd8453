"""Starting `triage-server serve` as a real process and finding its port."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import Process
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import migrated_sqlite


@dataclass
class ServerProcess:
    process: Process
    port: int
    log: list[dict[str, object]] = field(default_factory=list)

    async def wait_for(self, event: str, count: int, within_seconds: float = 30) -> None:
        """Reads the log until `event` has been logged `count` times (e.g. every worker serving)."""
        assert self.process.stderr is not None
        async with asyncio.timeout(within_seconds):
            while sum(1 for entry in self.log if entry["event"] == event) < count:
                line = await self.process.stderr.readline()
                if not line:
                    raise RuntimeError(f"the server exited before logging {event!r} {count} times: {self.log}")
                self.log.append(parse_line(line))

    async def read_log(self) -> None:
        """Collects the rest of the JSON log lines until the process exits."""
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(parse_line(line))


def parse_line(line: bytes) -> dict[str, object]:
    """A JSON log line; anything else (a C library writing to stderr) is kept as raw text."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return {"event": "raw", "text": line.decode(errors="replace")}
    assert isinstance(entry, dict)
    return entry


def database_url(directory: Path) -> str:
    """The server's SQLite database in `directory`, migrated when it is new (as `make run` does)."""
    path = directory / "triage.db"
    return f"sqlite:///{path}" if path.exists() else migrated_sqlite(path)


# The server secret of every server these tests start.
SECRET = "e2e-secret"


def server_environment(directory: Path) -> dict[str, str]:
    """The environment of a server kept in `directory` (and of `triage-server keys` for it)."""
    return os.environ | {
        "TRIAGE_PORT": "0",
        "TRIAGE_DATABASE_URL": database_url(directory),
        "TRIAGE_SECRET_KEY": SECRET,
    }


async def create_key(directory: Path, role: str = "admin", *options: str) -> str:
    """Runs `triage-server keys create` for the server in `directory`; returns the secret (its last line)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "keys", "create", "--name", f"e2e-{role}", "--role", role, *options,
        cwd=directory, env=server_environment(directory), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode().splitlines()[-1]


async def start_server(directory: Path, **env: str) -> ServerProcess:
    """Starts the server in `directory` on a free port and waits until it serves."""
    environment = server_environment(directory)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        cwd=directory,
        env=environment | env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(30):
            async for line in process.stderr:
                entry = parse_line(line)
                log.append(entry)
                if entry.get("event") == "serving":
                    return ServerProcess(process, int(str(entry["port"])), log)
    except TimeoutError:
        # Not left behind serving (and holding its port) after the test has failed.
        process.kill()
        await process.wait()
        raise
    raise RuntimeError(f"the server exited before serving: {log}")
