"""Cases stored encrypted, so that Explain can take a classification id."""

from __future__ import annotations

import base64
import os

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from server.app import TriageServer
from server.calls import Role
from server.case_vault import CaseVault
from server.config import Settings
from server.store.database import open_database
from server.store.models import StoredCase
from tests.conftest import issue_test_key
from tests.support import make_case
from triage_client import AsyncTriageClient, FailedPrecondition, NotFound

MARKER = "zq-stored-5521"
CASE = make_case(f"chest pain {MARKER}", "67y", history=f"note {MARKER}", case_ref="enc-9")


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"encryption_key": SecretStr(new_key())})


async def test_an_earlier_classification_can_be_explained_by_its_id(
    client: AsyncTriageClient, settings: Settings
) -> None:
    classification = await client.classify(CASE)

    events = [e async for e in client.explain(classification_id=classification.classification_id)]

    final = events[-1].classification
    assert final.esi_level == classification.esi_level
    assert final.case_ref == "enc-9"
    assert final.classification_id != classification.classification_id  # explained afresh, and audited
    engine = open_database(settings.database_url)
    with Session(engine) as session:
        stored = session.exec(select(StoredCase)).all()
    engine.dispose()
    # Every classification's case is stored, and never in the clear.
    assert {s.classification_id for s in stored} == {classification.classification_id, final.classification_id}
    assert all(MARKER.encode() not in s.ciphertext for s in stored)


async def test_only_the_caller_or_an_admin_may_have_a_case_explained(
    server: TriageServer, keys: dict[Role, str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with AsyncTriageClient(target, api_key=keys[Role.CLINICIAN]) as owner:
        classification_id = (await owner.classify(CASE)).classification_id
    other = await issue_test_key(server, Role.CLINICIAN)
    async with AsyncTriageClient(target, api_key=other) as stranger:
        with pytest.raises(NotFound):
            [e async for e in stranger.explain(classification_id=classification_id)]
    async with AsyncTriageClient(target, api_key=keys[Role.ADMIN]) as admin:
        assert [e async for e in admin.explain(classification_id=classification_id)]


async def test_an_unknown_id_is_not_found(client: AsyncTriageClient) -> None:
    with pytest.raises(NotFound):
        [e async for e in client.explain(classification_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")]


@pytest.fixture
def rekeyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"encryption_key": SecretStr(new_key())})


async def test_a_case_sealed_with_another_key_is_a_clear_failed_precondition(
    server: TriageServer, client: AsyncTriageClient, rekeyed: Settings, keys: dict[Role, str]
) -> None:
    classification_id = (await client.classify(CASE)).classification_id
    await server.stop(grace_seconds=0)
    restarted = TriageServer(rekeyed)
    await restarted.start()
    try:
        async with AsyncTriageClient(f"127.0.0.1:{restarted.port}", api_key=keys[Role.ADMIN]) as again:
            with pytest.raises(FailedPrecondition, match="another encryption key"):
                [e async for e in again.explain(classification_id=classification_id)]
    finally:
        await restarted.stop(grace_seconds=0)


def test_a_sealed_case_cannot_be_moved_to_another_record() -> None:
    vault = CaseVault(os.urandom(32))
    nonce, ciphertext = vault.seal("01ARZ3NDEKTSV4RRFFQ69G5FAV", b"case")

    assert vault.open(vault.fingerprint, "01ARZ3NDEKTSV4RRFFQ69G5FAV", nonce, ciphertext) == b"case"
    assert vault.open(vault.fingerprint, "01ARZ3NDEKTSV4RRFFQ69G5FAW", nonce, ciphertext) is None


@pytest.mark.parametrize("key", ["short", base64.b64encode(os.urandom(16)).decode(), "!!!"])
def test_a_malformed_encryption_key_is_refused_at_startup(key: str) -> None:
    with pytest.raises(ValueError, match="32 random bytes"):
        Settings(encryption_key=key)  # type: ignore[arg-type]
