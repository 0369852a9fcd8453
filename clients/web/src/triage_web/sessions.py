"""Sessions in an encrypted cookie: the CSRF token of every visitor and the signed-in admin's credential.

The cookie is a Fernet token (AES-CBC with HMAC-SHA256) under a key derived from the session secret, so
the browser can neither read the admin's credential nor forge a session; its timestamp bounds its life.
It is HttpOnly, Secure and SameSite=Strict. Nothing is kept on the server, so any web replica with the
same secret serves any session.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "triage_session"
# The OIDC sign-in in flight (state, nonce, PKCE verifier). The identity provider's redirect back is a
# cross-site navigation, which carries no SameSite=Strict cookie: this one is Lax, and only for the callback.
OIDC_COOKIE = "triage_oidc"
OIDC_PATH = "/admin/oidc/"
OIDC_SECONDS = 600

Purpose = Literal["session", "oidc"]


@dataclass(frozen=True)
class Admin:
    """A signed-in administrator: the credential every admin call is made with, and until when."""

    credential: str
    name: str
    kind: Literal["api_key", "oidc"]
    expires_at: float


@dataclass(frozen=True)
class Session:
    """One visitor's session. `fresh` is true when it was made by this request (no valid cookie came)."""

    csrf: str
    admin: Admin | None = None
    fresh: bool = field(default=False, compare=False)

    @classmethod
    def new(cls, admin: Admin | None = None) -> Session:
        """A session with a new CSRF token: at sign-in too, so that a token seen before it is worth nothing."""
        return cls(csrf=secrets.token_urlsafe(32), admin=admin, fresh=True)


class SessionCookies:
    """Reads and writes the session cookie and the OIDC transaction cookie."""

    def __init__(self, secret: bytes, lifetime_seconds: int) -> None:
        self._lifetime = lifetime_seconds
        self._fernets = {purpose: Fernet(_derive(secret, purpose)) for purpose in ("session", "oidc")}

    def seal(self, purpose: Purpose, data: dict[str, Any], *, at: float | None = None) -> str:
        """`data` encrypted and authenticated, stamped with the time `at` (default: now)."""
        plain = json.dumps(data, separators=(",", ":")).encode()
        return self._fernets[purpose].encrypt_at_time(plain, int(time.time() if at is None else at)).decode()

    def open(self, purpose: Purpose, token: str, ttl_seconds: int) -> dict[str, Any] | None:
        """The sealed data, or None when the token is forged, tampered with, or older than `ttl_seconds`."""
        try:
            data = json.loads(self._fernets[purpose].decrypt(token.encode(), ttl=ttl_seconds))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def read(self, request: Request) -> Session:
        """The request's session (cached on the request), or a new one when its cookie is missing or invalid."""
        cached: Session | None = getattr(request.state, "session", None)
        if cached is not None:
            return cached
        session = self._decode(request.cookies.get(SESSION_COOKIE, ""))
        request.state.session = session
        return session

    def _decode(self, token: str) -> Session:
        data = self.open("session", token, self._lifetime) if token else None
        if data is None or not isinstance(data.get("csrf"), str):
            return Session.new()
        admin = None
        if isinstance(data.get("admin"), dict):
            try:
                admin = Admin(**data["admin"])
            except TypeError:
                return Session.new()
            if admin.expires_at <= time.time():
                admin = None
        return Session(csrf=data["csrf"], admin=admin)

    def write(self, request: Request, response: Response, session: Session) -> None:
        """Sets the cookie for `session` and makes it the request's session."""
        request.state.session = replace(session, fresh=False)
        data: dict[str, Any] = {"csrf": session.csrf, "admin": asdict(session.admin) if session.admin else None}
        max_age = self._lifetime
        if session.admin is not None:
            max_age = max(1, min(max_age, int(session.admin.expires_at - time.time())))
        response.set_cookie(
            SESSION_COOKIE,
            self.seal("session", data),
            max_age=max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )

    def write_oidc(self, response: Response, data: dict[str, Any]) -> None:
        response.set_cookie(
            OIDC_COOKIE,
            self.seal("oidc", data),
            max_age=OIDC_SECONDS,
            path=OIDC_PATH,
            secure=True,
            httponly=True,
            samesite="lax",
        )

    def read_oidc(self, request: Request) -> dict[str, Any] | None:
        token = request.cookies.get(OIDC_COOKIE, "")
        return self.open("oidc", token, OIDC_SECONDS) if token else None

    @staticmethod
    def clear_oidc(response: Response) -> None:
        response.delete_cookie(OIDC_COOKIE, path=OIDC_PATH, secure=True, httponly=True, samesite="lax")


def _derive(secret: bytes, purpose: Purpose) -> bytes:
    """A Fernet key per purpose, so that a cookie of one kind is never accepted as the other."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"triage-web {purpose}".encode()).derive(secret)
    return base64.urlsafe_b64encode(key)


# A page that loads itself again: that second load is a same-site navigation, which carries the cookie.
_RELOAD = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0">'
    "<title>ED triage</title></head><body><main><p>Loading&hellip; "
    '<a href="">Continue</a></p></main></body></html>'
)


class CrossSiteArrivals:
    """A link followed from another site arrives without the SameSite=Strict session cookie.

    Answered as a new visitor, its new cookie would replace the session the browser holds: any link in
    an email would sign an admin out and void the forms open in other tabs. Such a request gets a page
    that reloads itself instead (pure ASGI middleware; browsers without Sec-Fetch-* headers are unchanged).
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            headers = Headers(scope=scope)
            if (
                headers.get("sec-fetch-site") == "cross-site"
                and headers.get("sec-fetch-mode") == "navigate"
                and SESSION_COOKIE not in cookie_parser(headers.get("cookie", ""))
            ):
                await HTMLResponse(_RELOAD)(scope, receive, send)
                return
        await self._app(scope, receive, send)
