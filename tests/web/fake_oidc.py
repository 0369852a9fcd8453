"""A fake OIDC provider as a real HTTP server on 127.0.0.1:0: discovery, an authorize endpoint that signs in
one configured person at once and redirects back with a code, a token endpoint that checks the PKCE
verifier, and the JWKS its tokens are signed with."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import send_json

KID = "fake-oidc-1"
AUDIENCE = "triage-api"  # the gRPC server's TRIAGE_OIDC_AUDIENCE
CLIENT_ID = "triage-web"


@dataclass
class FakeOidc:
    """The provider's state: who signs in next, the codes it issued, and what it was asked."""

    url: str = ""
    claims: dict[str, Any] = field(default_factory=lambda: {"sub": "admin-1", "triage_role": "admin"})
    wrong_nonce: bool = False
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def _token(self, audience: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": audience, "iat": now, "exp": now + 600, **self.claims, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": KID})

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """The redirect back to the client with a code, or an error status."""
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return 400, "unknown client or response type"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, "PKCE with S256 is required"
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = query
        return 302, f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token response: only for a code issued here, once, with its redirect URI and PKCE verifier."""
        with self.lock:
            self.token_requests.append(form)
            asked = self.codes.pop(form.get("code", ""), None)
        if asked is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != asked["code_challenge"] or form.get("redirect_uri") != asked["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        nonce = "not-the-nonce" if self.wrong_nonce else asked.get("nonce", "")
        return 200, {
            "token_type": "Bearer",
            "expires_in": 600,
            "id_token": self._token(CLIENT_ID, nonce=nonce),
            "access_token": self._token(AUDIENCE),
        }

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [jwk | {"kid": KID, "use": "sig", "alg": "RS256"}]}


def _handler(fake: FakeOidc) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                self._json(200, fake.discovery())
            elif parts.path == "/jwks":
                self._json(200, fake.jwks())
            elif parts.path == "/authorize":
                status, target = fake.authorize(query)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path == "/token":
                self._json(*fake.exchange(form))
            else:
                self._json(404, {"error": "not_found"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            send_json(self, status, body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def start_fake_oidc() -> tuple[FakeOidc, ThreadingHTTPServer]:
    fake = FakeOidc()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    http.daemon_threads = True
    fake.url = f"http://127.0.0.1:{http.server_address[1]}"
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return fake, http
