"""Helpers shared by the tests: building cases the way callers do."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from server.store import schema
from triage.v1 import case_pb2

_AGE = re.compile(r"^(\d+)(y|mo|d)$")


def make_case(
    complaint: str,
    age: str = "40y",
    *,
    sex: str = "",
    history: str = "",
    vitals: Mapping[str, float] | None = None,
    avpu: str = "",
    ams: bool = False,
    risks: tuple[str, ...] = (),
    arrival: str = "",
    case_ref: str = "",
) -> case_pb2.TriageCase:
    """A TriageCase from test-friendly values: age "67y", "5mo" or "10d"; enum names in lower case."""
    case = case_pb2.TriageCase(chief_complaint=complaint, history=history, case_ref=case_ref)
    match = _AGE.match(age)
    assert match is not None, age
    setattr(case.age, {"y": "years", "mo": "months", "d": "days"}[match[2]], int(match[1]))
    for name, value in (vitals or {}).items():
        setattr(case.vitals, name, value)
    if sex:
        case.sex = case_pb2.Sex.Value(f"SEX_{sex.upper()}")
    if avpu:
        case.avpu = case_pb2.Avpu.Value(f"AVPU_{avpu.upper()}")
    if arrival:
        case.arrival_mode = case_pb2.ArrivalMode.Value(f"ARRIVAL_MODE_{arrival.upper()}")
    case.acute_mental_status_change = ams
    case.risk_factors.extend(case_pb2.RiskFactor.Value(f"RISK_FACTOR_{r.upper()}") for r in risks)
    return case


def case_kwargs(entry: Mapping[str, Any]) -> dict[str, Any]:
    """make_case arguments from a row of clinical_cases.toml."""
    keys = ("age", "sex", "history", "vitals", "avpu", "ams", "arrival")
    kwargs = {key: entry[key] for key in keys if key in entry}
    if "risks" in entry:
        kwargs["risks"] = tuple(entry["risks"])
    return kwargs


async def eventually(check: Callable[[], Awaitable[bool]], within_seconds: float) -> None:
    """Waits until `check` is true; fails after `within_seconds`. For state another process changes."""
    async with asyncio.timeout(within_seconds):
        while not await check():  # noqa: ASYNC110 - the state is in another process; there is no event
            await asyncio.sleep(0.05)


@functools.cache
def _migrated_template() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="triage-schema-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "template.db"
    schema.upgrade(f"sqlite:///{path}")
    return path


def migrated_sqlite(path: Path) -> str:
    """The URL of a new SQLite database at `path` with the current schema, as `triage-server migrate` makes it.

    Migrated once per test run and copied: a test gets the migrations' schema without paying for them.
    """
    shutil.copyfile(_migrated_template(), path)
    return f"sqlite:///{path}"


def downgrade(url: str, revision: str) -> None:
    """Takes the database at `url` back to schema `revision`, as an older release left it."""
    from alembic import command

    from server.store.database import open_database

    config = schema._config(url)
    engine = open_database(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def send_json(handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
    """Answers a request of a local http.server (the fake model, OIDC and JWKS servers) with JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
