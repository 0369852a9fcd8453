"""A real OIDC issuer on 127.0.0.1:0 for the admin console's sign-in: discovery, authorize, token, JWKS.

The authorization-code flow with PKCE, as an identity provider runs it, minus the login page: the
authorize endpoint signs in the one configured user at once and redirects back with a code. The token
endpoint refuses a code without the matching `code_verifier` (S256), a code used twice, or a redirect
URI other than the one authorized. Its tokens are RS256 JWTs signed with a key published at the JWKS
URL, so the gRPC server can check them as it checks any issuer's (TRIAGE_OIDC_*).
"""

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

KID = "issuer-key-1"


@dataclass(frozen=True)
class Grant:
    """What an authorize request was given a code for."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None


@dataclass
class OidcIssuer:
    """The issuer's state: who signs in, the codes handed out, and every request, for tests to inspect."""

    client_id: str
    # The `aud` of access tokens: what the gRPC server is told to accept (TRIAGE_OIDC_AUDIENCE).
    api_audience: str
    subject: str = "admin-1"
    role: str = "admin"
    role_claim: str = "triage_role"
    url: str = ""
    requests: list[str] = field(default_factory=list)
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    _grants: dict[str, Grant] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [jwk | {"kid": KID, "use": "sig", "alg": "RS256"}]}

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """The redirect back to the client with a code (or the error), as (status, location or message)."""
        if query.get("client_id") != self.client_id or not query.get("redirect_uri"):
            return 400, "unknown client or no redirect_uri"
        back = query["redirect_uri"]
        state = {"state": query["state"]} if "state" in query else {}
        if query.get("response_type") != "code":
            return 302, _with_query(back, {"error": "unsupported_response_type", **state})
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 302, _with_query(back, {"error": "invalid_request", "error_description": "PKCE S256 required"})
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = Grant(self.client_id, back, query["code_challenge"], query.get("nonce"))
        return 302, _with_query(back, {"code": code, **state})

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Exchanges a code for tokens once, given the verifier that hashes to its challenge."""
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return 400, {"error": "invalid_grant"}
        if form.get("redirect_uri") != grant.redirect_uri or form.get("client_id", grant.client_id) != self.client_id:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri or client_id differs"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(challenge, grant.code_challenge):
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        now = int(time.time())
        # One audience list for both tokens, so that a client may send either to the API (azp names the client).
        claims = {
            "iss": self.url,
            "sub": self.subject,
            "aud": [self.client_id, self.api_audience],
            "azp": self.client_id,
            "iat": now,
            "exp": now + 600,
            "name": "Ada Admin",
            "email": "ada@example.org",
            self.role_claim: self.role,
        }
        id_claims = claims | ({"nonce": grant.nonce} if grant.nonce else {})
        return 200, {
            "token_type": "Bearer",
            "expires_in": 600,
            "access_token": self._sign(claims),
            "id_token": self._sign(id_claims),
            "scope": "openid profile email",
        }

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


def _with_query(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{urlencode(params)}"


def _single(values: dict[str, list[str]]) -> dict[str, str]:
    return {name: value[0] for name, value in values.items()}


def _handler(issuer: OidcIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            issuer.requests.append(path)
            if path == "/.well-known/openid-configuration":
                self._json(200, issuer.discovery())
            elif path == "/jwks":
                self._json(200, issuer.jwks())
            elif path == "/authorize":
                status, where = issuer.authorize(_single(parse_qs(query)))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", where)
                self.send_header("Content-Length", "0" if status == 302 else str(len(where)))
                self.end_headers()
                if status != 302:
                    self.wfile.write(where.encode())
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            issuer.requests.append(self.path)
            if self.path != "/token":
                self._json(404, {"error": "not_found"})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            form = _single(parse_qs(body))
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):  # client_secret_basic: the client id is the user name
                form.setdefault("client_id", base64.b64decode(basic[6:]).decode().partition(":")[0])
            self._json(*issuer.token(form))

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def start_oidc_issuer(client_id: str, api_audience: str) -> tuple[OidcIssuer, ThreadingHTTPServer]:
    """Serves the issuer on 127.0.0.1, a free port, from a thread; its URL is its `iss`."""
    issuer = OidcIssuer(client_id=client_id, api_audience=api_audience)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(issuer))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    return issuer, server
