"""What every route needs: the settings, the gRPC clients, the session cookies and the page renderer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from triage_client import AsyncTriageClient
from triage_web import case_form, labels
from triage_web.oidc import OidcClient
from triage_web.sessions import Admin, Session, SessionCookies
from triage_web.settings import WebSettings
from triage_web.sign_in_limits import SignInLimiter


def templates() -> Jinja2Templates:
    """The page templates, autoescaped (every .html, and the SVG charts inside them)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("triage_web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(usd=labels.usd, usd_input=labels.usd_input, when=labels.when, day=labels.day)
    env.filters.update(duration=labels.duration, clock=labels.clock, field_label=case_form.field_label)
    env.globals.update(labels=labels, form=case_form)
    return Jinja2Templates(env=env)


@dataclass
class WebContext:
    """The web process's shared state, made at startup (app.state.web)."""

    settings: WebSettings
    templates: Jinja2Templates
    sessions: SessionCookies
    sign_in_limiter: SignInLimiter
    gateway: AsyncTriageClient
    oidc: OidcClient | None

    def admin_client(self, admin: Admin) -> AsyncTriageClient:
        """A client that calls with the signed-in admin's own credential (never the gateway key), on the
        gateway's channel."""
        return self.gateway.with_caller(bearer=admin.credential)

    def render(
        self,
        request: Request,
        template: str,
        values: dict[str, Any] | None = None,
        *,
        status_code: int = 200,
        session: Session | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """A page; with the visitor's session cookie when it is new (or `session`, which replaces it)."""
        session = session or self.sessions.read(request)
        context = {
            "csrf_token": session.csrf,
            "admin": session.admin,
            "notice": "",
            "error": "",
            "oidc_enabled": self.oidc is not None,
            **(values or {}),
        }
        response: Response = self.templates.TemplateResponse(
            request, template, context, status_code=status_code, headers=headers
        )
        if session.fresh:
            self.sessions.write(request, response, session)
        return response


def client_address(request: Request) -> str:
    """The visitor's address: the connecting one, or X-Forwarded-For's from a trusted proxy (uvicorn's)."""
    return request.client.host if request.client is not None else ""


def web(request: Request) -> WebContext:
    context: WebContext = request.app.state.web
    return context


def fragment(request: Request, template: str, **values: Any) -> str:
    """A template rendered to a string (a part of a page sent as a server-sent event)."""
    return web(request).templates.get_template(template).render(request=request, **values)
