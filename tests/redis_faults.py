"""Faults of a real redis-server for tests: hung (SIGSTOP) or down, and the connections it was sent."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator

import redis.asyncio

from tests.redis_server import RedisServer


async def _info(url: str, field: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return int((await client.info())[field])
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def hung(redis_server: RedisServer) -> AsyncIterator[None]:
    """Redis stopped inside the block: the kernel still accepts connections and data, nothing answers.

    Resumed on leaving, whatever happens (a stopped process would not stop on SIGTERM).
    """
    pid = await _info(redis_server.url, "process_id")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def down(redis_server: RedisServer) -> AsyncIterator[None]:
    """Redis not running inside the block (connections refused); started again on the same port on leaving."""
    await redis_server.stop()
    try:
        yield
    finally:
        await redis_server.start()


async def connections_received(redis_server: RedisServer) -> int:
    """Connections Redis has accepted since it started, not counting the one asking.

    Clients drop a connection that timed out, so after a hang this counts the
    attempts made on it (those made while it was stopped are accepted when it resumes).
    """
    return await _info(redis_server.url, "total_connections_received") - 1
