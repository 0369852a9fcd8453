"""OIDC bearer tokens (single sign-on, such as Google) as a second way in.

The token's signature is checked against the issuer's JWKS, its issuer,
audience and expiry (with a little clock skew) by PyJWT, and its role read
from a configurable claim. The JWKS is fetched on a worker thread, when a
token names a signing key not seen yet (key rotation) and at most once per
refresh interval, so calls never wait on the network otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import jwt

from server.calls import Principal, Role

log = logging.getLogger("triage.oidc")

# Asymmetric algorithms only: a shared-secret HS256 token must never pass as OIDC.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "PS512", "EdDSA")
_REFRESH_INTERVAL_SECONDS = 30.0
# Privilege order, for a claim that lists several roles: the strongest wins. Never the gateway role: its
# forwarded end-user addresses are trusted, so it is given only to an API key an admin made for one web tier,
# not to whoever an identity provider's claim names (a token claiming it alone holds none of our roles).
_ROLE_ORDER = (Role.ADMIN, Role.SERVICE, Role.CLINICIAN, Role.DEMO)


class OidcVerifier:
    """Verifies OIDC JWTs from one issuer for one audience."""

    def __init__(
        self, *, issuer: str, audience: str, jwks_url: str, role_claim: str, clock_skew_seconds: float
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._role_claim = role_claim
        self._leeway = clock_skew_seconds
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=False, cache_jwk_set=False, timeout=5)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._fetching: asyncio.Lock = asyncio.Lock()

    async def authenticate(self, token: str) -> Principal | None:
        """The token's principal (its role None when it names none of ours), or None if invalid."""
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
            key = await self._key(str(kid))
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=list(ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        subject = str(claims["sub"])
        return Principal(subject=f"oidc:{subject}"[:64], role=_role(claims.get(self._role_claim)), key_id="")

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        if kid not in self._keys and time.monotonic() - self._fetched_at >= _REFRESH_INTERVAL_SECONDS:
            async with self._fetching:
                if kid not in self._keys and time.monotonic() - self._fetched_at >= _REFRESH_INTERVAL_SECONDS:
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            jwk_set = await asyncio.to_thread(self._client.get_jwk_set, True)
        except jwt.PyJWKClientError as error:
            log.warning("could not fetch the OIDC JWKS", extra={"fields": {"error_type": type(error).__name__}})
            return
        self._keys = {str(key.key_id): key for key in jwk_set.keys if key.key_id}


def _role(claim: object) -> Role | None:
    values = {claim} if isinstance(claim, str) else set(claim) if isinstance(claim, list) else set()
    return next((role for role in _ROLE_ORDER if role.value in values), None)
