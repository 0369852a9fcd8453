"""Admin sign-in with OIDC (authorization code with PKCE) against a fake provider that the gRPC server trusts
too: the server checks the provider's tokens against its JWKS, as tests/integration/test_oidc.py does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from server.app import TriageServer
from server.config import Settings
from tests.web.conftest import StartWeb, WebTier, csrf_token
from tests.web.fake_oidc import AUDIENCE, CLIENT_ID, FakeOidc, start_fake_oidc
from tests.web.pages import XSS, assert_inert, settings_form
from triage_client import AsyncTriageClient


@pytest.fixture
def oidc() -> Iterator[FakeOidc]:
    fake, http = start_fake_oidc()
    yield fake
    http.shutdown()
    http.server_close()


@pytest.fixture
def settings(settings: Settings, oidc: FakeOidc) -> Settings:
    return settings.model_copy(
        update={"oidc_issuer": oidc.url, "oidc_audience": AUDIENCE, "oidc_jwks_url": oidc.jwks_url}
    )


@pytest.fixture
async def sso_web(start_web: StartWeb, server: TriageServer, oidc: FakeOidc) -> WebTier:
    return await start_web(target=f"127.0.0.1:{server.port}", oidc_issuer=oidc.url, oidc_client_id=CLIENT_ID)


@pytest.fixture
async def sso_browser(sso_web: WebTier) -> AsyncIterator[httpx2.AsyncClient]:
    async with sso_web.browser() as browser:
        yield browser


async def to_provider(browser: httpx2.AsyncClient) -> str:
    """Starts a sign-in: the URL of the provider's authorize endpoint the browser is sent to."""
    page = await browser.get("/admin/sign-in")
    assert 'id="sign-in-oidc"' in page.text
    start = await browser.post("/admin/oidc/start", data={"csrf_token": csrf_token(page.text)})
    assert start.status_code == 303, start.text
    return start.headers["location"]


async def back_from_provider(authorize_url: str) -> str:
    """The provider signs the person in and sends the browser back: the callback URL, with the code."""
    async with httpx2.AsyncClient() as provider:
        answer = await provider.get(authorize_url)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


async def test_an_admin_signs_in_with_oidc_and_pkce_and_acts_as_themself(
    sso_browser: httpx2.AsyncClient, oidc: FakeOidc, client: AsyncTriageClient
) -> None:
    oidc.claims |= {"name": "Ada Admin"}
    # The sign-in page's form may lead to the provider, and to no other site.
    policy = (await sso_browser.get("/admin/sign-in")).headers["content-security-policy"]
    assert f"form-action 'self' {oidc.url};" in policy
    authorize = await to_provider(sso_browser)
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert authorize.startswith(f"{oidc.url}/authorize?")
    assert query["code_challenge_method"] == "S256"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"].endswith("/admin/oidc/callback")
    assert len(query["state"]) >= 22
    assert len(query["nonce"]) >= 22

    callback = await sso_browser.get(await back_from_provider(authorize))
    assert callback.status_code == 200, callback.text
    # A page of the web tier's own moves on: the new SameSite=Strict cookie goes with a same-site navigation.
    assert '<meta http-equiv="refresh" content="0; url=/admin/settings">' in callback.text
    [exchange] = oidc.token_requests
    assert exchange["code_verifier"]
    assert "client_secret" not in exchange

    page = await sso_browser.get("/admin/settings")
    assert page.status_code == 200
    assert 'Signed in as <span class="who">Ada Admin</span>' in page.text
    saved = await sso_browser.post(
        "/admin/settings", data=settings_form(page.text) | {"danger_zone_policy": "flag_only"}
    )
    assert "Saved as version 1" in saved.text
    assert (await client.get_config()).config.updated_by == "oidc:admin-1"


async def test_a_person_without_the_admin_role_or_a_token_for_another_sign_in_gets_no_session(
    sso_browser: httpx2.AsyncClient, oidc: FakeOidc
) -> None:
    oidc.claims["triage_role"] = "clinician"
    callback = await sso_browser.get(await back_from_provider(await to_provider(sso_browser)))
    assert callback.status_code == 403
    assert "Your account has no admin role" in callback.text
    assert (await sso_browser.get("/admin/settings")).status_code == 303

    oidc.claims["triage_role"] = "admin"
    oidc.wrong_nonce = True
    callback = await sso_browser.get(await back_from_provider(await to_provider(sso_browser)))
    assert callback.status_code == 400
    assert "not for this sign-in (nonce)" in callback.text
    assert (await sso_browser.get("/admin/settings")).status_code == 303


async def test_a_callback_must_belong_to_the_sign_in_this_browser_started(
    sso_web: WebTier, sso_browser: httpx2.AsyncClient, oidc: FakeOidc
) -> None:
    back = await back_from_provider(await to_provider(sso_browser))
    # Another browser (an attacker's link, say) has no sign-in in flight.
    async with sso_web.browser() as other:
        stranger = await other.get(back)
    assert stranger.status_code == 400
    assert "was not started here" in stranger.text
    # The right browser with the state changed.
    forged = re.sub(r"state=[^&]+", "state=forged", back)
    assert (await sso_browser.get(forged)).status_code == 400
    assert oidc.token_requests == []  # no code was spent on either

    assert (await sso_browser.get(back)).status_code == 200
    # A code is good once.
    replayed = await sso_browser.get(back)
    assert replayed.status_code == 400


async def test_text_from_the_provider_is_inert(sso_browser: httpx2.AsyncClient, oidc: FakeOidc) -> None:
    oidc.claims |= {"name": XSS, "sub": XSS}
    callback = await sso_browser.get(await back_from_provider(await to_provider(sso_browser)))
    assert_inert(callback.text)
    settings = await sso_browser.get("/admin/settings")
    assert_inert(settings.text)
    # The server names the admin who changed the settings by the token's subject.
    saved = await sso_browser.post(
        "/admin/settings", data=settings_form(settings.text) | {"danger_zone_policy": "flag_only"}
    )
    assert "Saved as version 1" in saved.text
    assert_inert(saved.text)
    refused = await sso_browser.get("/admin/oidc/callback", params={"error": XSS})
    assert_inert(refused.text)
