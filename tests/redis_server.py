"""A real, throwaway redis-server on a free port, that a test may stop and start again."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest
import redis.asyncio


class RedisServer:
    """redis-server without persistence, in its own directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None
        self._process = await asyncio.create_subprocess_exec(
            executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            cwd=self._directory, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        if await client.ping():  # type: ignore[misc]  # typed for sync and async at once
                            return
                    except redis.ConnectionError:
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


def redis_available() -> None:
    """Skips the test when redis-server is missing, unless TEST_REQUIRE_REDIS says it must run."""
    if shutil.which("redis-server") is None:
        if os.environ.get("TEST_REQUIRE_REDIS"):
            pytest.fail("redis-server is not on PATH but TEST_REQUIRE_REDIS is set")
        pytest.skip("redis-server is not installed: .ci/run installs it")
