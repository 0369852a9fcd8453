"""Security headers on every response, and the check that a form post came from this site's page.

The Content-Security-Policy allows scripts, styles and images from this origin only: no inline script
or style, no eval, no framing. Forms may post here, and to the OIDC issuer (the sign-in redirect).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage_web.context import web
from triage_web.sessions import Session

log = logging.getLogger("triage_web.security")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(form_targets: tuple[str, ...] = ()) -> str:
    form_action = " ".join(("'self'", *form_targets))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers(form_targets: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(form_targets),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # The OIDC callback's URL carries the authorization code: no page sends its URL to another site.
        # Not no-referrer: under it browsers send `Origin: null` with a form post, which the check below
        # must refuse, so no form of this site's would work (seen in Chromium).
        "Referrer-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    }


class SecurityHeaders:
    """Pure ASGI middleware: adds the headers to every HTTP response (streamed ones too)."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self._app = app
        self._headers = dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._headers.items():
                    headers.setdefault(name, value)
                # Pages carry patient content, secrets shown once or admin data: never cached.
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self._app(scope, receive, with_headers)


def expected_origin(request: Request, public_url: str | None) -> str:
    return origin_of(public_url) if public_url else f"{request.url.scheme}://{request.url.netloc}"


def cross_site_reason(request: Request, session: Session, token: str, public_url: str | None) -> str | None:
    """Why a form post must be refused as possibly cross-site, or None when it came from this site's page.

    The token must match the session's (an attacker can neither read nor forge the encrypted cookie);
    the browser's own Sec-Fetch-Site and Origin must not name another site.
    """
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "sent from another site"
    origin = request.headers.get("origin")
    if origin is not None and origin != expected_origin(request, public_url):
        return "sent from another origin"
    if session.fresh:
        return "no session: the form expired"
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return "missing or wrong form token"
    return None


async def checked_form(request: Request) -> tuple[FormData, str | None]:
    """The posted form, and why it must be refused as cross-site (None when it may be used)."""
    form = await request.form()
    context = web(request)
    session = context.sessions.read(request)
    token = str(form.get("csrf_token", ""))
    return form, cross_site_reason(request, session, token, context.settings.public_url)


def refused(request: Request, reason: str) -> Response:
    """The answer to a form post that did not come from this site's page (or came too late)."""
    log.warning("form post refused: %s", reason)
    message = "This form was not sent from this site's page, or the page was open too long. Reload it and try again."
    return web(request).render(request, "error.html", {"error": message, "title": "Form refused"}, status_code=403)
