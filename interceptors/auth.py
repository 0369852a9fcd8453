"""Authentication and authorisation: who is calling, and may they call this?

Credentials arrive as `authorization: Bearer <token>`: an API key (`tri_...`)
or, when configured, an OIDC token. The policy, a table from service name to
the roles allowed, is given by the server; services not in it are refused.
Every credential fault gets the same UNAUTHENTICATED message, so a caller
learns nothing about which part of a key was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server.calls import Principal, Role, current_call
from server.errors import PermissionDenied, Unauthenticated
from server.identity.api_keys import ApiKeyAuthenticator, looks_like_key
from server.identity.oidc import OidcVerifier

# A policy entry: the roles allowed, or OPEN for calls that need no identity.
OPEN: frozenset[Role] | None = None
Policy = Mapping[str, frozenset[Role] | None]

_INVALID = "missing or invalid credentials: send `authorization: Bearer <API key or OIDC token>`"


class AuthInterceptor(ServerInterceptor):
    """Puts the caller's Principal on the call, or refuses the call."""

    def __init__(
        self,
        policy: Policy,
        api_keys: ApiKeyAuthenticator,
        oidc: OidcVerifier | None = None,
        *,
        anonymous_demo: bool = False,
    ) -> None:
        super().__init__()
        self._policy = policy
        self._api_keys = api_keys
        self._oidc = oidc
        self._anonymous_demo = anonymous_demo

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        service = method_name.split("/")[1] if method_name.count("/") == 2 else ""
        # Services missing from the policy are closed to all: new code fails safe.
        allowed = self._policy.get(service, frozenset())
        if allowed is not None:  # None: OPEN
            principal = await self._principal(context)
            if principal is None:
                raise Unauthenticated(_INVALID)
            if principal.role not in allowed:
                role = principal.role.value if principal.role else "no"
                raise PermissionDenied(f"the {role} role may not call {method_name}")
            call = current_call()
            if call is not None:
                call.principal = principal
        return await call_through(method, request, context)

    async def _principal(self, context: Context) -> Principal | None:
        token = _bearer(context)
        if token is None:
            if self._anonymous_demo:
                return Principal(subject=f"ip:{peer_address(context.peer())}", role=Role.DEMO)
            return None
        if looks_like_key(token):
            return await self._api_keys.authenticate(token)
        if self._oidc is not None:
            return await self._oidc.authenticate(token)
        return None


def _bearer(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            # A malformed header is a credential fault, not an anonymous call.
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def peer_address(peer: str) -> str:
    """The address in a gRPC peer string: `ipv4:10.0.0.7:5123` -> `10.0.0.7`, `ipv6:[::1]:5123` -> `::1`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return rest or peer
