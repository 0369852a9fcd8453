"""Letting the database go at stop: no connection is left open behind the server's back."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest
from sqlalchemy import text

from server.store.database import open_database, release


@pytest.mark.postgres
async def test_connections_still_in_use_by_a_cancelled_call_are_closed_before_the_database_is_let_go(
    postgres_url: str,
) -> None:
    engine = open_database(postgres_url)
    querying = threading.Event()
    used: list[Any] = []  # the driver's connection the thread used

    def slow_query() -> None:
        with engine.connect() as connection:
            used.append(connection.connection.dbapi_connection)
            querying.set()
            connection.execute(text("SELECT pg_sleep(0.5)"))

    # A call (or a refresh) cancelled at stop: its task ends, its worker thread and connection carry on.
    call = asyncio.ensure_future(asyncio.to_thread(slow_query))
    await asyncio.to_thread(querying.wait, 5)
    call.cancel()

    await release(engine)
    await asyncio.sleep(0.6)  # the thread has finished

    # Let go while the thread held it, its connection would end up in a discarded pool, unclosed:
    # an open session, and psycopg's ResourceWarning when it is collected, which fails whatever test
    # runs at that moment.
    assert used[0].closed
    gc.collect()
