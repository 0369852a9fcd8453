"""The ASGI application: routes, middleware, and the gRPC channel it opens at startup and closes at shutdown."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

import grpc
import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from triage_client import AsyncTriageClient
from triage_client.client import tls_credentials
from triage_web import admin_auth, admin_pages, demo
from triage_web.context import WebContext, templates
from triage_web.oidc import OidcClient
from triage_web.security import SecurityHeaders, origin_of, security_headers
from triage_web.sessions import CrossSiteArrivals, SessionCookies
from triage_web.settings import WebSettings
from triage_web.sign_in_limits import SignInLimiter

log = logging.getLogger("triage_web")

# The largest form: a 10,000-character note, each character up to 4 bytes, percent-encoded.
MAX_BODY_BYTES = 256 * 1024


def _credentials(settings: WebSettings) -> grpc.ChannelCredentials | None:
    if settings.target_tls or settings.target_ca_file is not None:
        return tls_credentials(settings.target_ca_file)
    return None


async def healthz(request: Request) -> Response:
    """The web process is up (it says nothing of the gRPC server, which has its own health service)."""
    return PlainTextResponse("ok")


def create_app(settings: WebSettings) -> Starlette:
    """The web tier for `settings`; the gRPC channel opens when the app starts (its lifespan)."""
    if settings.session_secret is None:
        log.warning("TRIAGE_WEB_SESSION_SECRET is not set: sessions are lost when this process restarts")
        secret = secrets.token_bytes(32)
    else:
        secret = settings.session_secret.get_secret_value().encode()
    if settings.api_key is None:
        log.warning("TRIAGE_WEB_API_KEY is not set: the demo page cannot classify")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway_key = settings.api_key.get_secret_value() if settings.api_key else ""
        gateway = AsyncTriageClient(settings.target, api_key=gateway_key, credentials=_credentials(settings))
        async with gateway, httpx2.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            app.state.web = WebContext(
                settings=settings,
                templates=templates(),
                sessions=SessionCookies(secret, settings.session_seconds),
                sign_in_limiter=SignInLimiter(settings.sign_in_rate_limit, secret),
                gateway=gateway,
                oidc=OidcClient(settings, http) if settings.oidc_issuer else None,
            )
            yield

    form_targets = (origin_of(settings.oidc_issuer),) if settings.oidc_issuer else ()
    middleware = [Middleware(SecurityHeaders, headers=security_headers(form_targets)), Middleware(CrossSiteArrivals)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET"]))
    routes = [
        Route("/healthz", healthz),
        *demo.routes,
        *admin_auth.routes,
        *admin_pages.routes,
        Mount("/static", StaticFiles(directory=str(files("triage_web") / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan, max_body_size=MAX_BODY_BYTES)
