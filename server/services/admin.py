"""AdminService: API keys and the audit log now; configuration, backends and usage later.

The RPCs not yet built answer UNIMPLEMENTED with a message saying so; their
messages are already in the contract so that clients can be written today.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from google.rpc import error_details_pb2
from grpc import aio

from server.errors import InvalidArgument, NotFound, Unimplemented, field_violation
from server.identity.api_keys import ApiKeyAuthenticator, issue_key, key_violations
from server.ids import is_id
from server.services.convert import api_key_message, audit_event_message, role_from_message
from server.store.api_keys import ApiKeyStore
from server.store.audit import AuditLog
from triage.v1 import admin_service_pb2, admin_service_pb2_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
_TOKEN_VERSION = "v1"


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    """The operator's interface (admin role only)."""

    def __init__(
        self, audit: AuditLog, keys: ApiKeyStore, server_secret: bytes, authenticator: ApiKeyAuthenticator
    ) -> None:
        self._audit = audit
        self._keys = keys
        self._secret = server_secret
        self._authenticator = authenticator

    async def ListAuditEvents(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListAuditEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListAuditEventsResponse:
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
        violations = _page_size_violations(request.page_size)
        if start is not None and end is not None and end <= start:
            violations.append(field_violation("end_time", "must be after start_time", "OUT_OF_RANGE"))
        after_id = None
        if request.page_token:
            after_id = _read_token(request.page_token, _range_key(start, end))
            if after_id is None:
                violations.append(
                    field_violation(
                        "page_token",
                        "is not a token from this listing; send next_page_token with the same time range",
                        "INVALID_TOKEN",
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        page = await self._audit.page(
            start=start, end=end, after_id=after_id, limit=request.page_size or DEFAULT_PAGE_SIZE
        )
        next_token = _make_token(page.events[-1].classification_id, _range_key(start, end)) if page.has_more else ""
        return admin_service_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_message(e) for e in page.events], next_page_token=next_token
        )

    async def GetConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("GetConfig", "runtime configuration")

    async def UpdateConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("UpdateConfig", "runtime configuration")

    async def ListBackends(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("ListBackends", "model backends")

    async def CreateApiKey(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.CreateApiKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.CreateApiKeyResponse:
        role = role_from_message(request.role)
        expires_in = request.expires_in.ToTimedelta() if request.HasField("expires_in") else None
        violations = key_violations(
            request.name, role, request.rate_limit, expires_in, request.monthly_budget_usd_micros
        )
        if violations or role is None:
            raise InvalidArgument(violations)
        issued = await asyncio.to_thread(
            issue_key,
            self._keys,
            self._secret,
            name=request.name,
            role=role,
            rate_limit=request.rate_limit,
            expires_in=expires_in,
            monthly_budget_usd_micros=request.monthly_budget_usd_micros,
        )
        self._authenticator.remember(issued.record)
        return admin_service_pb2.CreateApiKeyResponse(api_key=api_key_message(issued.record), secret=issued.secret)

    async def ListApiKeys(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListApiKeysRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListApiKeysResponse:
        violations = _page_size_violations(request.page_size)
        after_id = None
        if request.page_token:
            after_id = _read_token(request.page_token, "api_keys")
            if after_id is None:
                violations.append(field_violation("page_token", "is not a token from this listing", "INVALID_TOKEN"))
        if violations:
            raise InvalidArgument(violations)
        page = await asyncio.to_thread(self._keys.page, after_id=after_id, limit=request.page_size or DEFAULT_PAGE_SIZE)
        next_token = _make_token(page.keys[-1].key_id, "api_keys") if page.has_more else ""
        return admin_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in page.keys], next_page_token=next_token
        )

    async def RevokeApiKey(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.RevokeApiKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        if not is_id(request.key_id):
            raise InvalidArgument([field_violation("key_id", "must be a 26-character key id", "INVALID_FORMAT")])
        record = await asyncio.to_thread(self._keys.revoke, request.key_id, datetime.now(UTC))
        if record is None:
            raise NotFound(f"no API key {request.key_id}")
        self._authenticator.remember(record)
        return admin_service_pb2.RevokeApiKeyResponse(api_key=api_key_message(record))

    async def GetUsage(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("GetUsage", "cost accounting")


def _later(rpc: str, feature: str) -> Unimplemented:
    return Unimplemented(f"{rpc} is not implemented yet: it arrives with {feature}")


def _range_key(start: datetime | None, end: datetime | None) -> str:
    return f"{start.isoformat() if start else ''}|{end.isoformat() if end else ''}"


def _page_size_violations(page_size: int) -> list[error_details_pb2.BadRequest.FieldViolation]:
    if 0 <= page_size <= MAX_PAGE_SIZE:
        return []
    return [field_violation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}; got {page_size}", "OUT_OF_RANGE")]


def _make_token(last_id: str, scope: str) -> str:
    raw = f"{_TOKEN_VERSION}|{last_id}|{scope}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_token(token: str, scope: str) -> str | None:
    """The id to continue after, or None when the token is not ours or not for this listing."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    version, _, rest = raw.partition("|")
    last_id, _, token_scope = rest.partition("|")
    if version != _TOKEN_VERSION or not is_id(last_id) or token_scope != scope:
        return None
    return last_id
