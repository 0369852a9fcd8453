"""OIDC bearer tokens, checked against a JWKS served by a real HTTP server the test starts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from server.app import TriageServer
from server.config import Settings
from tests.support import make_case, send_json
from triage_client import AsyncTriageClient, PermissionDenied, Unauthenticated

ISSUER = "https://accounts.example.org"
AUDIENCE = "triage-api"
KID = "signing-key-1"
CASE = make_case("chest pain", "60y")


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    body = {"keys": [jwk | {"kid": KID, "use": "sig", "alg": "RS256"}]}

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            send_json(self, 200, body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def oidc_server(settings: Settings, jwks_url: str) -> AsyncIterator[TriageServer]:
    server = TriageServer(
        settings.model_copy(update={"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks_url": jwks_url})
    )
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


def token(key: Any, *, algorithm: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "nurse-4711", "iat": now, "exp": now + 300}
    claims |= {"triage_role": "clinician"}
    claims |= overrides
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": KID})


async def test_a_valid_token_acts_with_its_role(oidc_server: TriageServer, signing_key: rsa.RSAPrivateKey) -> None:
    target = f"127.0.0.1:{oidc_server.port}"
    async with AsyncTriageClient(target, api_key=token(signing_key)) as clinician:
        classification = await clinician.classify(CASE)
        with pytest.raises(PermissionDenied):
            await clinician.list_audit_events()
    admin_token = token(signing_key, sub="admin-1", triage_role=["clinician", "admin"])
    async with AsyncTriageClient(target, api_key=admin_token) as admin:
        [event] = [e async for e in admin.iter_audit_events()]

    assert event.classification_id == classification.classification_id
    assert event.key_id == "oidc:nurse-4711"


@pytest.mark.parametrize(
    "fault",
    ["wrong audience", "wrong issuer", "expired", "other signing key", "shared-secret algorithm", "no subject"],
)
async def test_invalid_tokens_are_unauthenticated(
    oidc_server: TriageServer, signing_key: rsa.RSAPrivateKey, fault: str
) -> None:
    now = int(time.time())
    bad = {
        "wrong audience": lambda: token(signing_key, aud="another-api"),
        "wrong issuer": lambda: token(signing_key, iss="https://evil.example.org"),
        # Past the 60 s allowance for clock skew.
        "expired": lambda: token(signing_key, exp=now - 120),
        "other signing key": lambda: token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "shared-secret algorithm": lambda: token("a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"),
        "no subject": lambda: token(signing_key, sub=None),
    }[fault]()
    async with AsyncTriageClient(f"127.0.0.1:{oidc_server.port}", api_key=bad) as client:
        with pytest.raises(Unauthenticated):
            await client.classify(CASE)


async def test_a_token_within_the_clock_skew_still_counts(
    oidc_server: TriageServer, signing_key: rsa.RSAPrivateKey
) -> None:
    just_expired = token(signing_key, exp=int(time.time()) - 10)
    async with AsyncTriageClient(f"127.0.0.1:{oidc_server.port}", api_key=just_expired) as client:
        assert (await client.classify(CASE)).esi_level


async def test_a_token_without_a_role_is_a_known_caller_without_permission(
    oidc_server: TriageServer, signing_key: rsa.RSAPrivateKey
) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{oidc_server.port}", api_key=token(signing_key, triage_role=None)) as c:
        with pytest.raises(PermissionDenied):
            await c.classify(CASE)


async def test_a_token_never_holds_the_gateway_role(oidc_server: TriageServer, signing_key: rsa.RSAPrivateKey) -> None:
    """Forwarded end-user addresses are trusted from gateway API keys only, never from an identity provider's claim."""
    target = f"127.0.0.1:{oidc_server.port}"
    async with AsyncTriageClient(target, api_key=token(signing_key, triage_role="gateway")) as claimed:
        with pytest.raises(PermissionDenied):
            await claimed.with_caller(end_user_address="203.0.113.7").classify(CASE)
        listed = claimed.with_caller(
            bearer=token(signing_key, triage_role=["gateway", "clinician"]), end_user_address="203.0.113.7"
        )
        await listed.classify(CASE)
    assert listed.rate_limit is not None
    assert listed.rate_limit.limit == 10_000  # the clinician's default in the tests, not the gateway's 20 a day
