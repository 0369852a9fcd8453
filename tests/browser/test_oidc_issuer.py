"""The local OIDC issuer refuses what a real one refuses, so that a sign-in passing against it proves PKCE."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from tests.browser.oidc_issuer import OidcIssuer, start_oidc_issuer

VERIFIER = "a-verifier-of-at-least-forty-three-characters-0123456789"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
BACK = "http://127.0.0.1:9/admin/oidc/callback"


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    issuer, http = start_oidc_issuer("web", "api")
    yield issuer
    http.shutdown()
    http.server_close()


def _code(issuer: OidcIssuer) -> str:
    status, location = issuer.authorize(
        {"response_type": "code", "client_id": "web", "redirect_uri": BACK, "state": "s1",
         "code_challenge": CHALLENGE, "code_challenge_method": "S256", "nonce": "n1"}
    )  # fmt: skip
    assert status == 302
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["s1"]
    return query["code"][0]


def _exchange(issuer: OidcIssuer, code: str, verifier: str) -> tuple[int, dict[str, object]]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": BACK, "client_id": "web"}
    return issuer.token(form | {"code_verifier": verifier})


def test_a_code_is_exchanged_once_for_tokens_the_jwks_verifies(issuer: OidcIssuer) -> None:
    code = _code(issuer)
    status, tokens = _exchange(issuer, code, VERIFIER)
    assert status == 200
    key = jwt.PyJWKSet.from_dict(issuer.jwks()).keys[0]
    claims = jwt.decode(str(tokens["id_token"]), key, algorithms=["RS256"], audience="web", issuer=issuer.url)
    assert (claims["nonce"], claims["triage_role"]) == ("n1", "admin")
    jwt.decode(str(tokens["access_token"]), key, algorithms=["RS256"], audience="api", issuer=issuer.url)
    assert _exchange(issuer, code, VERIFIER)[0] == 400


def test_a_wrong_verifier_is_refused(issuer: OidcIssuer) -> None:
    assert _exchange(issuer, _code(issuer), VERIFIER + "x") == (
        400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
    )  # fmt: skip
