"""The admin console over HTTP: sign-in with an API key, settings, usage, audit log, API keys, backends."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from server.app import TriageServer
from server.calls import Role
from tests.support import make_case
from tests.web.conftest import StartWeb, WebTier, csrf_token, sign_in
from tests.web.pages import settings_form
from triage.v1 import admin_service_pb2, classification_pb2
from triage_client import AsyncTriageClient, Unauthenticated
from triage_web.sessions import SessionCookies


async def test_an_admin_signs_in_with_a_key_and_other_keys_do_not(
    web: WebTier, browser: httpx2.AsyncClient, keys: dict[Role, str]
) -> None:
    signed_out = await browser.get("/admin/usage")
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/admin/sign-in?next=/admin/usage"

    clinician = await sign_in(browser, keys[Role.CLINICIAN])
    assert clinician.status_code == 403
    assert "has no admin role" in clinician.text
    wrong = await sign_in(browser, keys[Role.ADMIN][:-4] + "AAAA")
    assert wrong.status_code == 401
    assert "did not accept this credential" in wrong.text
    assert (await browser.get("/admin/settings")).status_code == 303

    page = await browser.get("/admin/sign-in?next=/admin/usage")
    signed_in = await browser.post(
        "/admin/sign-in?next=/admin/usage", data={"api_key": keys[Role.ADMIN], "csrf_token": csrf_token(page.text)}
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/admin/usage"
    usage = await browser.get("/admin/usage")
    assert usage.status_code == 200
    key_id = keys[Role.ADMIN].split("_")[1]
    assert f'Signed in as <span class="who">API key {key_id}</span>' in usage.text


async def test_the_session_cookie_is_encrypted_http_only_secure_and_strict(
    browser: httpx2.AsyncClient, keys: dict[Role, str]
) -> None:
    response = await sign_in(browser, keys[Role.ADMIN])
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("triage_session=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    # The key is in the cookie only encrypted: neither it nor its id can be read from it.
    secret = keys[Role.ADMIN]
    assert secret not in cookie
    assert secret.split("_")[1] not in cookie
    for path in ("/admin/settings", "/admin/keys"):
        assert secret not in (await browser.get(path)).text


async def test_a_session_ends_after_its_lifetime_or_when_tampered_with(
    web: WebTier, admin: httpx2.AsyncClient, keys: dict[Role, str]
) -> None:
    token = admin.cookies["triage_session"]
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    async with web.browser(cookies={"triage_session": tampered}) as other:
        assert (await other.get("/admin/settings")).status_code == 303

    sessions = SessionCookies(b"test-session-secret-0123456789abcdef", web.settings.session_seconds)
    who = {"credential": keys[Role.ADMIN], "name": "an admin", "kind": "api_key", "expires_at": time.time() + 3600}
    for age_seconds, status in ((60, 200), (web.settings.session_seconds + 60, 303)):
        cookie = sessions.seal("session", {"csrf": "token", "admin": who}, at=time.time() - age_seconds)
        async with web.browser(cookies={"triage_session": cookie}) as browser:
            assert (await browser.get("/admin/settings")).status_code == status, age_seconds


async def test_sign_out_ends_the_session(admin: httpx2.AsyncClient) -> None:
    page = await admin.get("/admin/settings")
    response = await admin.post("/admin/sign-out", data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 303
    assert (await admin.get("/admin/settings")).status_code == 303
    assert "You are signed out." in (await admin.get("/admin/sign-in?signed_out=1")).text


async def test_a_revoked_admin_key_ends_its_session(
    admin: httpx2.AsyncClient, client: AsyncTriageClient, keys: dict[Role, str]
) -> None:
    await client.revoke_api_key(admin_service_pb2.RevokeApiKeyRequest(key_id=keys[Role.ADMIN].split("_")[1]))
    response = await admin.get("/admin/settings")
    assert response.status_code == 401
    assert "no longer accepted" in response.text
    assert (await admin.get("/admin/settings")).status_code == 303


async def test_sign_in_attempts_are_limited_per_address(start_web: StartWeb, server: TriageServer) -> None:
    web = await start_web(target=f"127.0.0.1:{server.port}", sign_in_rate_limit="3/minute")
    async with web.browser() as browser:
        statuses = [(await sign_in(browser, "tri_wrong_key")).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        refused = await sign_in(browser, "tri_wrong_key")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "Too many sign-in attempts" in refused.text


async def test_settings_change_takes_effect_and_is_made_as_the_admin(
    admin: httpx2.AsyncClient, client: AsyncTriageClient, keys: dict[Role, str]
) -> None:
    page = await admin.get("/admin/settings")
    form = settings_form(page.text)
    assert form["steps.high_risk.backend"] == "learned"
    form |= {
        "steps.high_risk.backend": "rules",
        "steps.high_risk.strategy": "rules",
        "danger_zone_policy": "flag_only",
        "global_monthly_budget_usd": "12.50",
        "rate_limits.demo": "7/day",
    }
    saved = await admin.post("/admin/settings", data=form)
    assert saved.status_code == 200, saved.text
    assert "Saved as version 1" in saved.text

    config = (await client.get_config()).config
    assert config.version == 1
    assert config.high_risk.backend == "rules"
    assert config.danger_zone_policy == admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY
    assert config.global_monthly_budget_usd_micros == 12_500_000
    assert {r.role: r.rate_limit for r in config.default_rate_limits}[admin_service_pb2.ROLE_DEMO] == "7/day"
    # Made with the admin's own key, not the web tier's.
    assert config.updated_by.endswith(keys[Role.ADMIN].split("_")[1])
    classification = await client.classify(make_case("cough", "30y"))
    backends = {b.step: b.backend for b in classification.pipeline.step_backends}
    assert backends[classification_pb2.STEP_HIGH_RISK] == "rules"


async def test_a_stale_settings_form_says_someone_else_changed_it(
    admin: httpx2.AsyncClient, client: AsyncTriageClient
) -> None:
    form = settings_form((await admin.get("/admin/settings")).text)
    other = admin_service_pb2.UpdateConfigRequest(expected_version=0)
    other.config.global_monthly_budget_usd_micros = 99_000_000
    other.update_mask.paths.append("global_monthly_budget_usd_micros")
    await client.update_config(other)

    stale = await admin.post("/admin/settings", data=form | {"danger_zone_policy": "flag_only"})
    assert stale.status_code == 409
    assert "Someone else changed the settings" in stale.text
    config = (await client.get_config()).config
    assert config.version == 1
    assert config.danger_zone_policy == admin_service_pb2.DANGER_ZONE_POLICY_UP_TRIAGE
    # The form now shows the current settings, to apply the change again.
    assert settings_form(stale.text)["expected_version"] == "1"
    assert settings_form(stale.text)["global_monthly_budget_usd"] == "99.00"


async def test_settings_the_server_refuses_are_shown_next_to_their_fields(
    admin: httpx2.AsyncClient, client: AsyncTriageClient
) -> None:
    form = settings_form((await admin.get("/admin/settings")).text)
    refused = await admin.post("/admin/settings", data=form | {"rate_limits.demo": "lots"})
    assert refused.status_code == 400
    error = re.search(r'id="error-rate_limits-demo">([^<]+)<', refused.text)
    assert error is not None
    assert error[1]
    assert (await client.get_config()).config.version == 0
    for amount in ("-3", "1e22", "NaN"):
        bad_amount = await admin.post("/admin/settings", data=form | {"global_monthly_budget_usd": amount})
        assert bad_amount.status_code == 400, amount
        assert re.search(r'id="error-global_monthly_budget_usd">must be an amount', bad_amount.text), amount


@pytest.mark.parametrize(
    "path",
    [
        "/admin/audit?page_size=%C2%B2",  # '²' is a digit to str.isdigit, not to int()
        "/admin/audit?start=2026-01-01T00:00%2B14:00&end=nonsense",
        "/admin/usage?end=9999-12-31",
        "/admin/usage?start=yesterday",
        "/admin/oidc/callback?state=%C3%A9&code=x",
    ],
)
async def test_odd_query_values_get_a_page_that_says_so_never_a_500(admin: httpx2.AsyncClient, path: str) -> None:
    response = await admin.get(path)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert "<main" in response.text


async def test_a_link_from_another_site_does_not_replace_the_session(
    admin: httpx2.AsyncClient, keys: dict[Role, str]
) -> None:
    # A SameSite=Strict cookie is not sent on a navigation from another site: the page loads itself again
    # (then same-site, with the cookie) rather than answering a new visitor and replacing the session.
    arrival = await admin.get(
        "/admin/usage",
        headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "cookie": ""},
    )

    assert arrival.status_code == 200
    assert "set-cookie" not in arrival.headers
    assert '<meta http-equiv="refresh" content="0">' in arrival.text
    assert arrival.headers["content-security-policy"].startswith("default-src 'none'")
    reload = await admin.get("/admin/usage", headers={"sec-fetch-site": "same-origin", "sec-fetch-mode": "navigate"})
    assert reload.status_code == 200
    assert "Usage and cost" in reload.text


async def test_keys_are_created_with_the_secret_shown_once_listed_and_revoked(
    admin: httpx2.AsyncClient, server: TriageServer
) -> None:
    page = await admin.get("/admin/keys")
    created = await admin.post(
        "/admin/keys",
        data={"csrf_token": csrf_token(page.text), "name": "ward-7 tablet", "role": "clinician", "rate_limit": ""},
    )
    assert created.status_code == 200, created.text
    secret = re.search(r'id="new-key-secret" readonly value="(tri_[^"]+)"', created.text)
    assert secret is not None
    listing = await admin.get("/admin/keys")
    assert "ward-7 tablet" in listing.text
    assert secret[1] not in listing.text

    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=secret[1]) as ward:
        assert (await ward.classify(make_case("cough", "30y"))).esi_level
        key_id = secret[1].split("_")[1]
        revoked = await admin.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": csrf_token(listing.text)})
        assert revoked.status_code == 200
        assert f"Revoked the key ward-7 tablet ({key_id})" in revoked.text
        with pytest.raises(Unauthenticated):
            await ward.classify(make_case("cough", "30y"))

    invalid = await admin.post(
        "/admin/keys", data={"csrf_token": csrf_token(listing.text), "name": "x", "role": "demo", "rate_limit": "often"}
    )
    assert invalid.status_code == 400
    assert re.search(r'id="error-rate_limit">[^<]+<', invalid.text)


async def test_the_audit_log_pages_through_a_time_range(admin: httpx2.AsyncClient, client: AsyncTriageClient) -> None:
    ids = [(await client.classify(make_case("cough", "30y", case_ref=f"ref-{i}"))).classification_id for i in range(3)]
    first = await admin.get("/admin/audit", params={"page_size": "2"})
    assert [i in first.text for i in ids] == [True, True, False]
    next_link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert next_link is not None
    second = await admin.get(next_link[1].replace("&amp;", "&"))
    assert [i in second.text for i in ids] == [False, False, True]
    assert 'id="next-page"' not in second.text

    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    none = await admin.get("/admin/audit", params={"start": later})
    assert "No events in this range." in none.text
    bad = await admin.get("/admin/audit", params={"start": "yesterday"})
    assert bad.status_code == 400


async def test_backends_with_price_and_circuit_state(admin: httpx2.AsyncClient) -> None:
    page = await admin.get("/admin/backends")
    assert page.status_code == 200
    assert '<th scope="row">rules</th>' in page.text
    assert '<th scope="row">learned</th>' in page.text
    assert "openai:gpt-4o-mini" in page.text
    assert "closed (calls go through)" in page.text
