"""OIDC sign-in for admins: the authorization code flow with PKCE (S256), state and nonce.

The issuer's discovery document and signing keys are fetched asynchronously and cached. The ID token is
verified here (signature with an asymmetric algorithm, issuer, audience = this client, expiry, nonce);
the token handed to the gRPC server is then checked again by the server, which decides the role.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
import jwt

from triage_web.settings import WebSettings

# Only asymmetric algorithms: a token signed with a shared secret (HS256) or none is refused.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
CLOCK_SKEW_SECONDS = 60
DISCOVERY_TTL_SECONDS = 3600


class OidcError(Exception):
    """The sign-in failed; the message is safe to show (it names no secret)."""


@dataclass(frozen=True)
class Transaction:
    """What the callback needs to finish a sign-in; kept in an encrypted cookie meanwhile."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str

    @classmethod
    def new(cls, redirect_uri: str) -> Transaction:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(64), redirect_uri)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Identity:
    """A signed-in person: the token to call the API with, their name, and when it expires."""

    bearer: str
    name: str
    expires_at: float


class OidcClient:
    """One issuer, one client id."""

    def __init__(self, settings: WebSettings, http: httpx2.AsyncClient) -> None:
        if settings.oidc_issuer is None or settings.oidc_client_id is None:
            raise ValueError("OIDC sign-in needs an issuer and a client id")
        self.issuer = settings.oidc_issuer
        self._client_id = settings.oidc_client_id
        self._client_secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
        self._scopes = settings.oidc_scopes
        self._bearer = settings.oidc_bearer_token
        self._http = http
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: jwt.PyJWKSet | None = None

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            data = response.json()
        except (httpx2.HTTPError, ValueError) as error:
            raise OidcError(f"the identity provider did not answer ({type(error).__name__})") from None
        if not isinstance(data, dict):
            raise OidcError("the identity provider answered something that is not JSON")
        return data

    async def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document, cached for an hour."""
        if self._metadata is None or time.monotonic() - self._metadata_at > DISCOVERY_TTL_SECONDS:
            data = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if data.get("issuer") != self.issuer:
                raise OidcError("the identity provider's discovery document names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(name), str):
                    raise OidcError(f"the identity provider's discovery document has no {name}")
            self._metadata, self._metadata_at = data, time.monotonic()
        return self._metadata

    async def authorization_url(self, transaction: Transaction) -> str:
        metadata = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": transaction.redirect_uri,
            "scope": self._scopes,
            "state": transaction.state,
            "nonce": transaction.nonce,
            "code_challenge": transaction.challenge,
            "code_challenge_method": "S256",
        }
        endpoint: str = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    async def finish(self, transaction: Transaction, code: str) -> Identity:
        """Exchanges the code (with the PKCE verifier) for tokens and verifies the ID token."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": transaction.redirect_uri,
            "code_verifier": transaction.verifier,
            "client_id": self._client_id,
        }
        auth = (
            httpx2.BasicAuth(self._client_id, self._client_secret) if self._client_secret else httpx2.USE_CLIENT_DEFAULT
        )
        try:
            response = await self._http.post(metadata["token_endpoint"], data=form, auth=auth)
            tokens = response.json()
        except (httpx2.HTTPError, ValueError):
            raise OidcError("the identity provider did not answer the token request") from None
        if response.status_code != 200 or not isinstance(tokens, dict):
            error = tokens.get("error", "") if isinstance(tokens, dict) else ""
            raise OidcError(f"the identity provider refused the sign-in ({str(error)[:64] or response.status_code})")
        id_token, bearer = tokens.get("id_token"), tokens.get(self._bearer)
        if not isinstance(id_token, str) or not isinstance(bearer, str):
            raise OidcError(f"the identity provider sent no id_token or {self._bearer}")
        claims = await self._verify(id_token, metadata["jwks_uri"])
        if not secrets.compare_digest(str(claims.get("nonce", "")), transaction.nonce):
            raise OidcError("the ID token is not for this sign-in (nonce)")
        expires_at = float(claims["exp"])
        if self._bearer == "access_token" and isinstance(tokens.get("expires_in"), int | float):
            expires_at = time.time() + float(tokens["expires_in"])
        name = next((str(claims[c]) for c in ("name", "email", "preferred_username") if claims.get(c)), claims["sub"])
        return Identity(bearer=bearer, name=name, expires_at=expires_at)

    async def _verify(self, id_token: str, jwks_uri: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.InvalidTokenError:
            raise OidcError("the ID token is malformed") from None
        key = await self._key(jwks_uri, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self._client_id,
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "aud", "exp", "sub"]},
            )
        except jwt.InvalidTokenError as error:
            raise OidcError(f"the ID token is not valid ({type(error).__name__})") from None
        return claims

    async def _key(self, jwks_uri: str, kid: str | None) -> jwt.PyJWK:
        """The signing key named `kid`; the key set is fetched again when it does not know it (rotation)."""
        found = self._find(kid)
        if found is None:
            try:
                self._keys = jwt.PyJWKSet.from_dict(await self._get_json(jwks_uri))
            except jwt.PyJWKSetError:
                raise OidcError("the identity provider's signing keys are unusable") from None
            found = self._find(kid)
        if found is None:
            raise OidcError("the ID token is signed with a key the identity provider does not publish")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys.keys if self._keys is not None else []
        return next((key for key in keys if kid is None or key.key_id == kid), None)
