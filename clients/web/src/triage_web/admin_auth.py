"""Admin sign-in (an admin API key, or OIDC with PKCE), sign-out, and the guard of every admin page.

A sign-in is checked by calling the API with the credential (GetConfig): the server, not the web tier,
decides who is an admin. Attempts are limited per client address.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from triage_client import (
    AsyncTriageClient,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    TriageError,
    Unauthenticated,
    Unavailable,
)
from triage_web import labels
from triage_web.context import WebContext, client_address, web
from triage_web.labels import unavailable_message
from triage_web.oidc import OidcError, Transaction
from triage_web.security import checked_form, refused
from triage_web.sessions import Admin, Session

log = logging.getLogger("triage_web.admin")

ADMIN_PAGES = ("/admin/settings", "/admin/usage", "/admin/audit", "/admin/keys", "/admin/backends")
HOME = "/admin/settings"

AdminHandler = Callable[[Request, WebContext, AsyncTriageClient], Awaitable[Response]]
FormHandler = Callable[[Request, WebContext, AsyncTriageClient, FormData], Awaitable[Response]]


def _next_page(value: str | None) -> str:
    return value if value in ADMIN_PAGES else HOME


def sign_in_page(
    request: Request, *, error: str = "", notice: str = "", status_code: int = 200, session: Session | None = None
) -> Response:
    next_page = _next_page(request.query_params.get("next"))
    values = {"error": error, "notice": notice, "next_page": next_page}
    return web(request).render(request, "admin/sign_in.html", values, status_code=status_code, session=session)


async def _limited(request: Request) -> Response | None:
    wait = await web(request).sign_in_limiter.attempt(client_address(request))
    if wait is None:
        return None
    message = f"Too many sign-in attempts from your address. Try again in {labels.duration(wait)}."
    response = sign_in_page(request, error=message, status_code=429)
    response.headers["Retry-After"] = str(int(wait))
    return response


async def _signed_in(request: Request, admin: Admin, *, oidc: bool) -> Response:
    """Checks the credential with the API, then starts the admin's session; or says why not."""
    context = web(request)
    try:
        await context.admin_client(admin).get_config()
    except Unauthenticated:
        return sign_in_page(request, error="The triage service did not accept this credential.", status_code=401)
    except PermissionDenied:
        what = "Your account" if oidc else "This API key"
        return sign_in_page(request, error=f"{what} has no admin role on the triage service.", status_code=403)
    except TriageError as error:
        return sign_in_page(request, error=unavailable_message(error), status_code=503)
    session = Session.new(admin)
    next_page = _next_page(request.query_params.get("next"))
    if oidc:
        # Arriving from the identity provider is a cross-site navigation: a redirect now would not carry
        # the new SameSite=Strict cookie, so a page of ours moves on (a same-site navigation) instead.
        response = context.render(request, "admin/signed_in.html", {"next_page": HOME}, session=session)
        context.sessions.clear_oidc(response)
    else:
        response = RedirectResponse(next_page, status_code=303)
        context.sessions.write(request, response, session)
    log.info("admin signed in (%s)", admin.kind)
    return response


async def sign_in_form(request: Request) -> Response:
    if web(request).sessions.read(request).admin is not None:
        return RedirectResponse(_next_page(request.query_params.get("next")), status_code=303)
    notice = "You are signed out." if request.query_params.get("signed_out") else ""
    return sign_in_page(request, notice=notice)


async def sign_in_with_key(request: Request) -> Response:
    form, reason = await checked_form(request)
    if reason:
        return refused(request, reason)
    if limited := await _limited(request):
        return limited
    key = str(form.get("api_key", "")).strip()
    if not key:
        return sign_in_page(request, error="Enter an admin API key.", status_code=400)
    parts = key.split("_", 2)
    name = f"API key {parts[1]}" if len(parts) == 3 and parts[0] == "tri" else "API key"
    expires_at = time.time() + web(request).settings.session_seconds
    admin = Admin(credential=key, name=name, kind="api_key", expires_at=expires_at)
    return await _signed_in(request, admin, oidc=False)


def _redirect_uri(request: Request) -> str:
    public_url = web(request).settings.public_url
    return f"{public_url}/admin/oidc/callback" if public_url else str(request.url_for("oidc_callback"))


async def oidc_start(request: Request) -> Response:
    context = web(request)
    _, reason = await checked_form(request)
    if reason:
        return refused(request, reason)
    if context.oidc is None:
        return sign_in_page(request, error="Single sign-on is not configured.", status_code=404)
    if limited := await _limited(request):
        return limited
    transaction = Transaction.new(_redirect_uri(request))
    try:
        url = await context.oidc.authorization_url(transaction)
    except OidcError as error:
        return sign_in_page(request, error=f"Single sign-on is unavailable: {error}.", status_code=503)
    response = RedirectResponse(url, status_code=303)
    context.sessions.write_oidc(response, asdict(transaction))
    return response


async def oidc_callback(request: Request) -> Response:
    context = web(request)
    if context.oidc is None:
        return sign_in_page(request, error="Single sign-on is not configured.", status_code=404)
    pending = context.sessions.read_oidc(request)
    query = request.query_params
    if query.get("error"):
        response = sign_in_page(request, error=f"The identity provider did not sign you in ({query['error'][:64]}).")
        context.sessions.clear_oidc(response)
        return response
    try:
        transaction = Transaction(**pending) if pending is not None else None
    except TypeError:
        transaction = None
    if transaction is None or not secrets.compare_digest(query.get("state", "").encode(), transaction.state.encode()):
        message = "This sign-in expired or was not started here. Sign in again."
        return sign_in_page(request, error=message, status_code=400)
    try:
        identity = await context.oidc.finish(transaction, query.get("code", ""))
    except OidcError as error:
        return sign_in_page(request, error=f"Single sign-on failed: {error}.", status_code=400)
    expires_at = min(identity.expires_at, time.time() + context.settings.session_seconds)
    admin = Admin(credential=identity.bearer, name=identity.name, kind="oidc", expires_at=expires_at)
    return await _signed_in(request, admin, oidc=True)


async def sign_out(request: Request) -> Response:
    _, reason = await checked_form(request)
    if reason:
        return refused(request, reason)
    response = RedirectResponse("/admin/sign-in?signed_out=1", status_code=303)
    web(request).sessions.write(request, response, Session.new())
    return response


def admin_page(handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
    """An admin page: only for a signed-in admin, whose own credential makes every call."""

    @functools.wraps(handler)
    async def page(request: Request) -> Response:
        context = web(request)
        session = context.sessions.read(request)
        if session.admin is None:
            return RedirectResponse(f"/admin/sign-in?next={request.url.path}", status_code=303)
        try:
            return await handler(request, context, context.admin_client(session.admin))
        except (Unauthenticated, PermissionDenied):
            # Revoked, expired, or no longer an admin: the session ends.
            message = "Your sign-in is no longer accepted by the triage service. Sign in again."
            return sign_in_page(request, error=message, status_code=401, session=Session.new())
        except (Unavailable, DeadlineExceeded) as error:
            values = {"error": unavailable_message(error), "title": "Service unavailable"}
            return context.render(request, "error.html", values, status_code=503)
        except ResourceExhausted as error:
            wait = error.retry_delay.total_seconds() if error.retry_delay is not None else 1.0
            values = {"error": f"Too many admin calls at once; try again in {labels.duration(wait)}.", "title": "Busy"}
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return context.render(request, "error.html", values, status_code=429, headers=headers)
        except TriageError as error:
            # Anything else the service refused or failed at: said on a page, never a 500 without one.
            log.warning("admin call failed: %s", error.code.name)
            values = {"error": f"The triage service could not do this ({error.code.name}).", "title": "Not done"}
            return context.render(request, "error.html", values, status_code=502)

    return page


def admin_form(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """An admin form's post: refused unless it came from this site's page with the session's token."""

    async def with_form(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
        form, reason = await checked_form(request)
        if reason:
            return refused(request, reason)
        return await handler(request, context, client, form)

    return admin_page(functools.wraps(handler)(with_form))


async def admin_home(request: Request) -> Response:
    return RedirectResponse(HOME, status_code=303)


routes = [
    Route("/admin", admin_home),
    Route("/admin/sign-in", sign_in_form, methods=["GET"]),
    Route("/admin/sign-in", sign_in_with_key, methods=["POST"]),
    Route("/admin/oidc/start", oidc_start, methods=["POST"]),
    Route("/admin/oidc/callback", oidc_callback, methods=["GET"], name="oidc_callback"),
    Route("/admin/sign-out", sign_out, methods=["POST"]),
]
