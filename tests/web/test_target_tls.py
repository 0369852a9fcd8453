"""The web tier calls a gRPC server that serves TLS only, trusting the CA it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from tests.certificates import CertificateAuthority
from tests.web.conftest import StartWeb, csrf_token, sign_in


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, "grpc-ca")


@pytest.fixture
def settings(settings: Settings, ca: CertificateAuthority) -> Settings:
    issued = ca.issue("server", server=True)
    return settings.model_copy(update={"tls_cert": issued.certificate, "tls_key": issued.key})


async def test_the_demo_and_the_console_work_over_tls_to_the_server(
    start_web: StartWeb, server: TriageServer, keys: dict[Role, str], ca: CertificateAuthority
) -> None:
    target = f"127.0.0.1:{server.port}"
    web = await start_web(target=target, api_key=keys[Role.GATEWAY], target_ca_file=ca.certificate)
    async with web.browser() as browser:
        page = await browser.get("/")
        form = {"csrf_token": csrf_token(page.text), "age.value": "67", "chief_complaint": "chest pain"}
        assert 'data-level="2"' in (await browser.post("/explain", data=form)).text
        assert (await sign_in(browser, keys[Role.ADMIN])).status_code == 303
    plaintext = await start_web(target=target, api_key=keys[Role.GATEWAY])
    async with plaintext.browser() as browser:
        page = await browser.get("/")
        form = {"csrf_token": csrf_token(page.text), "age.value": "67", "chief_complaint": "chest pain"}
        refused = await browser.post("/explain", data=form)
    assert refused.status_code == 503
    assert "The triage service is not answering" in refused.text
