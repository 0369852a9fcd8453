"""Turns exceptions into gRPC status codes with google.rpc details, in one place.

A ServiceError becomes its status and details. Anything else is our fault:
INTERNAL with a generic message, and a log line naming only the exception
type, because an exception's text may quote patient content.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server.errors import Internal, ServiceError

log = logging.getLogger("triage.errors")


class ErrorInterceptor(ServerInterceptor):
    """Maps ServiceError (and unexpected exceptions) to a status with rich details."""

    async def intercept(
        self,
        method: Behaviour,
        request: Any,
        context: Context,
        method_name: str,
    ) -> Any:
        try:
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
        await context.abort_with_status(error.to_status())
