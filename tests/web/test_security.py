"""Security of the web tier: headers and CSP, CORS, CSRF, and escaping of every text an admin or a visitor
can put in front of another."""

from __future__ import annotations

import httpx2

from server.app import TriageServer
from server.calls import Role
from tests.support import make_case
from tests.web.conftest import StartWeb, WebTier, csrf_token
from tests.web.pages import XSS, assert_inert, markup, settings_form
from triage_client import AsyncTriageClient

ADMIN_PAGES = ("/admin/settings", "/admin/usage", "/admin/audit", "/admin/keys", "/admin/backends")
PUBLIC_PAGES = ("/", "/admin/sign-in")


async def test_every_page_has_a_strict_csp_security_headers_and_no_inline_code(
    web: WebTier, admin: httpx2.AsyncClient
) -> None:
    async with web.browser() as visitor:
        responses = [await visitor.get(path) for path in (*PUBLIC_PAGES, "/static/app.js", "/healthz")]
    # A visitor's session (it holds the form token) is out of reach of scripts and other sites.
    cookie = responses[0].headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "secure" in cookie
    assert "samesite=strict" in cookie
    responses += [await admin.get(path) for path in ADMIN_PAGES]
    for response in responses:
        path = response.url.path
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "style-src 'self';" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["cache-control"] == "no-store"
        assert "server" not in response.headers
        if response.headers["content-type"].startswith("text/html"):
            assert markup(response.text).problems == [], path


async def test_cors_is_closed_unless_configured(
    web: WebTier, start_web: StartWeb, server: TriageServer, browser: httpx2.AsyncClient
) -> None:
    evil = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in (await browser.get("/", headers=evil)).headers
    preflight = await browser.options("/explain", headers=evil | {"Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers

    opened = await start_web(target=f"127.0.0.1:{server.port}", cors_origins=["https://partner.example"])
    async with opened.browser() as other:
        allowed = await other.get("/", headers={"Origin": "https://partner.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://partner.example"
        assert "access-control-allow-credentials" not in allowed.headers
        refused = await other.get("/", headers=evil)
        assert "access-control-allow-origin" not in refused.headers


async def test_a_cross_site_form_post_is_refused(
    web: WebTier, admin: httpx2.AsyncClient, client: AsyncTriageClient, keys: dict[Role, str]
) -> None:
    page = await admin.get("/admin/settings")
    form = settings_form(page.text) | {"danger_zone_policy": "flag_only"}
    token = form["csrf_token"]
    attempts = {
        # What a page on another site can send: the browser adds these headers (and, SameSite=Strict, no cookie).
        "from another site": ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, form),
        "from another origin": ({"Origin": "https://evil.example"}, form),
        "without the token": ({}, {k: v for k, v in form.items() if k != "csrf_token"}),
        "with another token": ({}, form | {"csrf_token": token[:-2] + "xx"}),
    }
    for what, (headers, data) in attempts.items():
        response = await admin.post("/admin/settings", data=data, headers=headers)
        assert response.status_code == 403, what
        assert "This form was not sent from this site" in response.text
    async with web.browser() as stranger:  # no session cookie at all
        assert (await stranger.post("/admin/settings", data=form)).status_code == 303  # to sign in, nothing done
        assert (await stranger.post("/admin/sign-in", data={"api_key": "x", "csrf_token": token})).status_code == 403
    cross_site = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    key_id = keys[Role.CLINICIAN].split("_")[1]
    assert (await admin.post(f"/admin/keys/{key_id}/revoke", headers=cross_site)).status_code == 403
    assert (await admin.post("/admin/sign-out", headers=cross_site)).status_code == 403
    assert "revoked" not in (await admin.get("/admin/keys")).text  # and still signed in
    assert (await client.get_config()).config.version == 0

    same_site = await admin.post(
        "/admin/settings", data=form, headers={"Origin": web.url, "Sec-Fetch-Site": "same-origin"}
    )
    assert same_site.status_code == 200
    assert (await client.get_config()).config.version == 1


async def test_text_from_admins_and_callers_is_inert_on_every_page(
    admin: httpx2.AsyncClient, client: AsyncTriageClient
) -> None:
    # A key named with the payload, with a budget (so that it is named on the usage page too).
    page = await admin.get("/admin/keys")
    created = await admin.post(
        "/admin/keys",
        data={"csrf_token": csrf_token(page.text), "name": XSS, "role": "clinician", "monthly_budget_usd": "5"},
    )
    assert created.status_code == 200
    assert_inert(created.text)
    [key_id] = [k.key_id async for k in client.iter_api_keys() if k.name == XSS]
    # A case_ref with the payload, in the audit log.
    await client.classify(make_case("cough", "30y", case_ref=XSS))
    for path in ("/admin/keys", "/admin/audit", "/admin/usage"):
        assert_inert((await admin.get(path)).text)
    revoked = await admin.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": csrf_token(page.text)})
    assert_inert(revoked.text)

    # Settings the server refuses come back in the form as typed, with the server's reason.
    form = settings_form((await admin.get("/admin/settings")).text)
    for field in ("rate_limits.demo", "prices.new.backend", "global_monthly_budget_usd"):
        refused = await admin.post("/admin/settings", data=form | {field: XSS, "prices.new.input_usd": "1"})
        assert refused.status_code == 400, field
        assert_inert(refused.text)
    assert (await client.get_config()).config.version == 0

    # Query parameters shown back.
    assert_inert((await admin.get("/admin/usage", params={"start": XSS, "key": XSS})).text)
    assert_inert((await admin.get("/admin/audit", params={"start": XSS})).text)
    assert_inert((await admin.get("/admin/sign-in", params={"next": XSS})).text, shown=False)
