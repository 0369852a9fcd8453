"""The fuzz suite's one server (a real process), its callers, and values that reach past validation."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from server.calls import Role
from server.identity.api_keys import issue_key
from server.ids import new_id
from server.store import schema
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from tests.fake_llm import Reply, answer, start_fake_llm
from tests.fuzz.harness import METHODS, Caller, FuzzServer
from tests.fuzz.strategies import Hints
from triage.v1 import admin_service_pb2, classify_service_pb2
from triage.v1.classify_service_pb2 import ClassifyRequest

SECRET = "fuzz-secret"
# Far above what the suite sends: the limits are exercised by their own tests, not here.
UNLIMITED = "1000000/second"
ROLES = ("admin", "clinician", "service", "demo", "gateway")
# Every kind of caller: each role; no credentials; credentials that are wrong in each way; odd metadata;
# and one that allows the server almost no time (its deadline is caller input too).
CALLERS = (
    *ROLES,
    "anonymous",
    "unknown-key",
    "malformed",
    "empty-bearer",
    "jwt-like",
    "odd-request-id",
    "odd-end-user",
    "hurried",
)
# The end user a gateway calls for (a gateway's call without one is refused).
END_USER = (("x-end-user-address", "2001:db8::7"),)


@dataclass
class Fuzzing:
    server: FuzzServer
    caller: Caller
    hints: Hints
    # Keys whose role defaults apply (no limit of their own): for the configuration's property test.
    role_default_callers: tuple[str, ...]


@contextmanager
def _database(directory: Path) -> Iterator[str]:
    """A fresh PostgreSQL database when TEST_POSTGRES_URL names a server (as in CI: the stricter store,
    and production's), else a SQLite file."""
    server_url = os.environ.get("TEST_POSTGRES_URL", "")
    if not server_url:
        yield f"sqlite:///{directory / 'triage.db'}"
        return
    name = f"triage_fuzz_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(server_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _key(store: ApiKeyStore, role: Role, name: str, rate_limit: str = "") -> tuple[str, str]:
    issued = issue_key(store, SECRET.encode(), name=name, role=role, rate_limit=rate_limit)
    return issued.record.key_id, issued.secret


@pytest.fixture(scope="session")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    directory = tmp_path_factory.mktemp("fuzz")
    with _database(directory) as database_url:
        yield from _serve(directory, database_url)


def _serve(directory: Path, database_url: str) -> Iterator[Fuzzing]:
    fake, http = start_fake_llm()
    # Routed to a model by a fuzzed configuration, a step gets a sound answer.
    fake.defaults.update(
        high_risk=answer(high_risk=True, reasons=["sudden onset"]),
        resources=answer(resources=[{"kind": "labs", "reason": "panel"}]),
        narrative=Reply(chunks=("A short ", "narrative."), output_tokens=5),
    )
    environment = {
        "TRIAGE_PORT": "0",
        "TRIAGE_DATABASE_URL": database_url,
        "TRIAGE_SECRET_KEY": SECRET,
        "TRIAGE_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TRIAGE_OPENAI_BASE_URL": fake.url,
        "TRIAGE_OPENAI_PROVIDERS": f'{{"fake": {{"base_url": "{fake.url}"}}}}',
        "TRIAGE_DANGER_ZONE_POLICY": "up_triage",
        **{f"TRIAGE_RATE_LIMIT_{role.value.upper()}": UNLIMITED for role in Role},
    }
    schema.upgrade(database_url)
    engine = open_database(database_url)
    store = ApiKeyStore(engine)
    credentials: dict[str, tuple[tuple[str, str], ...]] = {
        "anonymous": (),
        "unknown-key": (("authorization", f"Bearer tk_{new_id()}_nosuchsecret"),),
        "malformed": (("authorization", "Basic dXNlcjpwYXNz"),),
        "empty-bearer": (("authorization", "Bearer "),),
        "jwt-like": (("authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),),
    }
    for role in Role:
        # Their own generous limit: a fuzzed UpdateConfig may set any role default.
        for_whom = END_USER if role is Role.GATEWAY else ()
        credentials[role.value] = (
            ("authorization", f"Bearer {_key(store, role, f'fuzz-{role.value}', UNLIMITED)[1]}"),
            *for_whom,
        )
        credentials[f"{role.value}-by-role"] = (
            ("authorization", f"Bearer {_key(store, role, f'role-{role.value}')[1]}"),
            *for_whom,
        )
    credentials["odd-request-id"] = (*credentials["clinician"], ("x-request-id", "../../x y;" + "z" * 300))
    credentials["odd-end-user"] = (credentials["gateway"][0], ("x-end-user-address", "../../x y;" + "z" * 300))
    credentials["hurried"] = credentials["service"]
    # Keys the fuzzer may revoke or ask the usage of.
    victims = [_key(store, Role.DEMO, f"victim-{n}")[0] for n in range(3)]
    engine.dispose()

    server = FuzzServer(directory, environment)
    try:
        server.start()
        caller = Caller(f"127.0.0.1:{server.port}", credentials)
        try:
            hints = _hints(caller, victims)
            yield Fuzzing(server, caller, hints, tuple(f"{role.value}-by-role" for role in Role))
        finally:
            caller.close()
    finally:
        server.stop()
        http.shutdown()
        http.server_close()


def _hints(caller: Caller, victims: list[str]) -> Hints:
    """Values that exist on this server (ids, tokens) and values that reach config and key checks."""
    classify = next(m for m in METHODS if m.name == "Classify")
    audit = next(m for m in METHODS if m.name == "ListAuditEvents")
    ids = []
    for complaint in ("chest pain", "headache", "sprained ankle"):
        request = ClassifyRequest()
        request.case.chief_complaint = complaint
        request.case.age.years = 40
        _, [response] = caller.call(classify, request.SerializeToString(), "clinician")
        ids.append(classify_service_pb2.ClassifyResponse.FromString(response).classification.classification_id)
    listing = admin_service_pb2.ListAuditEventsRequest(page_size=1).SerializeToString()
    _, [page] = caller.call(audit, listing, "admin")
    token = admin_service_pb2.ListAuditEventsResponse.FromString(page).next_page_token
    return {
        "classification_id": st.sampled_from([*ids, new_id(), ids[0].lower()]),
        "key_id": st.sampled_from([*victims, new_id()]),
        "page_token": st.sampled_from([token, token[:-2], "djF8"]),
        "chief_complaint": st.sampled_from(["chest pain", "headache", "abdominal pain", "fever", "laceration"]),
        "backend": st.sampled_from(
            ["rules", "learned", "openai:gpt-4o-mini", "fake:model", "fake:", "nosuch:model", "openai:unpriced"]
        ),
        "rate_limit": st.sampled_from(
            ["5/minute", "0/second", "10/second;1000/hour", "1/99999 year", "99999999999/second", "1 per 3 hours"]
        ),
        # NUL: PostgreSQL text holds none, so stored strings must be refused with it, not fail the write.
        "name": st.sampled_from(["integration", "fuzz key", "nul\x00name"]),
        "case_ref": st.sampled_from(["ref-1", "nul\x00ref", "r" * 128]),
    }
