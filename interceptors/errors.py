"""Turns exceptions into gRPC status codes with google.rpc details, in one place.

A ServiceError becomes its status and details; a domain error (server/domain.py)
first becomes its ServiceError (server/errors.from_domain). A request that cannot be parsed
(corrupt wire format, invalid UTF-8) becomes INVALID_ARGUMENT, not the UNKNOWN
grpc would answer. Anything else is our fault: INTERNAL with a generic message,
and a log line naming only the exception type and where it was raised,
because an exception's text may quote patient content.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from grpc import aio

from interceptors.base import Behaviour, Context, Deserializer, ServerInterceptor, call_through
from server.calls import current_call
from server.domain import DomainError
from server.errors import (
    DATABASE_FAULTS,
    Internal,
    InvalidArgument,
    ServiceError,
    database_unavailable,
    field_violation,
    from_domain,
)

log = logging.getLogger("triage.errors")


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so the call can answer properly."""

    reason: str


class ErrorInterceptor(ServerInterceptor):
    """Maps ServiceError, unparsable requests and unexpected exceptions to a status."""

    def request_deserializer(self, deserializer: Deserializer) -> Deserializer:
        if deserializer is None:
            return None
        parse = deserializer

        def parse_or_mark(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as error:
                # protobuf's message names the type and the fault, never the content.
                return MalformedRequest(str(error))

        return parse_or_mark

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidArgument(
                    [field_violation("request", f"could not be parsed: {request.reason}", "MALFORMED_REQUEST")]
                )
            response = await call_through(method, request, context)
        except Exception as error:  # noqa: BLE001 - every error must become a status
            await self._abort(error, context, method_name)
        if isinstance(response, AsyncIterator):
            return self._stream(response, context, method_name)
        return response

    async def _stream(self, responses: AsyncIterator[Any], context: Context, method_name: str) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        except Exception as error:  # noqa: BLE001 - every error must become a status
            await self._abort(error, context, method_name)

    async def _abort(self, error: Exception, context: Context, method_name: str) -> None:
        if isinstance(error, aio.AbortError):
            raise error
        if isinstance(error, DomainError):
            with contextlib.suppress(TypeError):  # one without a status is logged below as unexpected
                error = from_domain(error)
        if _is_database_fault(error):
            log.warning(
                "database unavailable", extra={"fields": {"method": method_name, "error_type": type(error).__name__}}
            )
            error = database_unavailable()
        if not isinstance(error, ServiceError):
            # Where it happened, not what it said: frames carry no values.
            where = traceback.extract_tb(error.__traceback__)[-1]
            log.error(
                "unexpected error",
                extra={
                    "fields": {
                        "method": method_name,
                        "error_type": type(error).__name__,
                        "location": f"{where.filename}:{where.lineno} in {where.name}",
                    }
                },
            )
            error = Internal("internal error; it has been logged")
        status = error.to_status()
        # Metadata the call gathered (request id, rate-limit headers) rides with the error.
        call = current_call()
        extra = (*call.response_metadata, *call.trailers) if call is not None else ()
        await context.abort(status.code, status.details, (*status.trailing_metadata, *extra))


def _is_database_fault(error: BaseException) -> bool:
    """SQLAlchemy's, or the driver's own (psycopg, sqlite3) when raised below SQLAlchemy."""
    return isinstance(error, DATABASE_FAULTS) or type(error).__name__ in ("OperationalError", "InterfaceError")
