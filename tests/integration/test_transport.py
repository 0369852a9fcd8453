"""TLS, mutual TLS and the maximum message size, with certificates the test makes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from tests.certificates import CertificateAuthority
from tests.conftest import issue_test_key
from tests.support import make_case
from triage_client import AsyncTriageClient, ResourceExhausted, Unavailable, tls_credentials

CASE = make_case("chest pain", "60y")


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, "hospital-ca")


async def _serve(settings: Settings) -> TriageServer:
    server = TriageServer(settings)
    await server.start()
    return server


@pytest.fixture
async def tls_server(settings: Settings, authority: CertificateAuthority) -> AsyncIterator[TriageServer]:
    issued = authority.issue("server", server=True)
    server = await _serve(settings.model_copy(update={"tls_cert": issued.certificate, "tls_key": issued.key}))
    yield server
    await server.stop(grace_seconds=0)


async def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(
    tls_server: TriageServer, authority: CertificateAuthority
) -> None:
    key = await issue_test_key(tls_server, Role.CLINICIAN)
    target = f"127.0.0.1:{tls_server.port}"
    async with AsyncTriageClient(target, api_key=key, credentials=tls_credentials(authority.certificate)) as client:
        assert (await client.classify(CASE)).esi_level
    async with AsyncTriageClient(target, api_key=key) as plaintext:
        with pytest.raises(Unavailable):
            await plaintext.classify(CASE, timeout=2)


@pytest.fixture
async def mtls_server(settings: Settings, authority: CertificateAuthority) -> AsyncIterator[TriageServer]:
    issued = authority.issue("server", server=True)
    server = await _serve(
        settings.model_copy(
            update={"tls_cert": issued.certificate, "tls_key": issued.key, "tls_client_ca": authority.certificate}
        )
    )
    yield server
    await server.stop(grace_seconds=0)


async def test_mutual_tls_needs_a_client_certificate_from_the_configured_ca(
    mtls_server: TriageServer, authority: CertificateAuthority, tmp_path: Path
) -> None:
    key = await issue_test_key(mtls_server, Role.SERVICE)
    target = f"127.0.0.1:{mtls_server.port}"
    ours = authority.issue("epic-interface", server=False)
    theirs = CertificateAuthority(tmp_path, "other-ca").issue("intruder", server=False)

    with_ours = tls_credentials(authority.certificate, ours.certificate, ours.key)
    async with AsyncTriageClient(target, api_key=key, credentials=with_ours) as client:
        assert (await client.classify(CASE)).esi_level
    for credentials in (
        tls_credentials(authority.certificate),
        tls_credentials(authority.certificate, theirs.certificate, theirs.key),
    ):
        async with AsyncTriageClient(target, api_key=key, credentials=credentials) as refused:
            with pytest.raises(Unavailable):
                await refused.classify(CASE, timeout=2)


async def test_an_oversized_request_is_refused_before_it_is_parsed(client: AsyncTriageClient) -> None:
    huge = make_case("x" * (65 * 1024), "40y")

    with pytest.raises(ResourceExhausted, match="larger than max"):
        await client.classify(huge)
    assert [e async for e in client.iter_audit_events()] == []
