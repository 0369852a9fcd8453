"""AdminService: the audit log now; configuration, backends, keys and usage later.

The RPCs not yet built answer UNIMPLEMENTED with a message saying so; their
messages are already in the contract so that clients can be written today.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from grpc import aio

from server.errors import InvalidArgument, Unimplemented, field_violation
from server.ids import is_id
from server.services.convert import audit_event_message
from server.store.audit import AuditLog
from triage.v1 import admin_service_pb2, admin_service_pb2_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
_TOKEN_VERSION = "v1"


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    """The operator's interface (admin role only, once authentication lands)."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def ListAuditEvents(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListAuditEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListAuditEventsResponse:
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
        violations = []
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            violations.append(
                field_violation(
                    "page_size", f"must be between 0 and {MAX_PAGE_SIZE}; got {request.page_size}", "OUT_OF_RANGE"
                )
            )
        if start is not None and end is not None and end <= start:
            violations.append(field_violation("end_time", "must be after start_time", "OUT_OF_RANGE"))
        after_id = None
        if request.page_token:
            after_id = _read_token(request.page_token, start, end)
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
        next_token = _make_token(page.events[-1].classification_id, start, end) if page.has_more else ""
        return admin_service_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_message(e) for e in page.events], next_page_token=next_token
        )

    async def GetConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("GetConfig", "runtime configuration")

    async def UpdateConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("UpdateConfig", "runtime configuration")

    async def ListBackends(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("ListBackends", "model backends")

    async def CreateApiKey(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("CreateApiKey", "API keys")

    async def ListApiKeys(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("ListApiKeys", "API keys")

    async def RevokeApiKey(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("RevokeApiKey", "API keys")

    async def GetUsage(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise _later("GetUsage", "cost accounting")


def _later(rpc: str, feature: str) -> Unimplemented:
    return Unimplemented(f"{rpc} is not implemented yet: it arrives with {feature}")


def _range_key(start: datetime | None, end: datetime | None) -> str:
    return f"{start.isoformat() if start else ''}|{end.isoformat() if end else ''}"


def _make_token(last_id: str, start: datetime | None, end: datetime | None) -> str:
    raw = f"{_TOKEN_VERSION}|{last_id}|{_range_key(start, end)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_token(token: str, start: datetime | None, end: datetime | None) -> str | None:
    """The id to continue after, or None when the token is not ours or not for this range."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    version, _, rest = raw.partition("|")
    last_id, _, range_key = rest.partition("|")
    if version != _TOKEN_VERSION or not is_id(last_id) or range_key != _range_key(start, end):
        return None
    return last_id
