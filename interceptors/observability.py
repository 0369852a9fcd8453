"""The outermost interceptor: request id, one access-log line, metrics.

It opens the call's CallState, so everything inside can add to it, and
reports what came out: method, status code, duration, key id, role and ESI
level. Nothing of the request's content is read, so nothing of it can leak.
Response metadata gathered by the inner interceptors (request id, the
server's version, rate-limit figures) goes out as response headers (initial metadata) before the first
response; a call that fails has only trailers, and the error interceptor
puts it there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server import __version__, metrics
from server.calls import CallState, begin_call
from server.ids import new_id

log = logging.getLogger("triage.access")

REQUEST_ID_HEADER = "x-request-id"
# The server's release on every response, health checks included (`grpcurl -v` shows it).
VERSION_HEADER = "x-server-version"
# A caller's own request id is kept when it is short and plain; otherwise we mint one.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
# Probes call these every few seconds; their lines would drown the rest.
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ObservabilityInterceptor(ServerInterceptor):
    """Request ids, the access log and Prometheus metrics, for every call."""

    def __init__(self) -> None:
        super().__init__()
        # Labelled metric children, looked up once per method and code.
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._latencies: dict[str, Any] = {}

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        call = CallState(method=method_name, request_id=_request_id(context), peer=context.peer())
        call.response_metadata += [(REQUEST_ID_HEADER, call.request_id), (VERSION_HEADER, __version__)]
        begin_call(call)
        try:
            response = await call_through(method, request, context)
        except BaseException as error:
            self._finish(call, context, error)
            raise
        if isinstance(response, AsyncIterator):
            return self._stream(response, call, context)
        await context.send_initial_metadata(call.response_metadata)
        context.set_trailing_metadata(call.trailers)
        self._finish(call, context, None)
        return response

    async def _stream(self, responses: AsyncIterator[Any], call: CallState, context: Context) -> AsyncIterator[Any]:
        headers_sent = False
        try:
            async for response in responses:
                if not headers_sent:
                    await context.send_initial_metadata(call.response_metadata)
                    headers_sent = True
                yield response
        except BaseException as error:
            self._finish(call, context, error)
            raise
        context.set_trailing_metadata(call.trailers if headers_sent else [*call.response_metadata, *call.trailers])
        self._finish(call, context, None)

    def _finish(self, call: CallState, context: Context, error: BaseException | None) -> None:
        code = _status_code(context, error)
        elapsed = time.monotonic() - call.started
        counter = self._counters.get((call.method, code))
        if counter is None:
            counter = self._counters[call.method, code] = metrics.REQUESTS.labels(call.method, code.name)
        counter.inc()
        latency = self._latencies.get(call.method)
        if latency is None:
            latency = self._latencies[call.method] = metrics.LATENCY.labels(call.method)
        latency.observe(elapsed)
        if call.esi_level is not None and code is grpc.StatusCode.OK:
            metrics.CLASSIFICATIONS.labels(str(call.esi_level)).inc()
        principal = call.principal
        fields: dict[str, object] = {
            "request_id": call.request_id,
            "method": call.method,
            "code": code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "peer": call.peer,
            "key_id": principal.key_id if principal else "",
            "role": principal.role.value if principal and principal.role else "",
        }
        if call.esi_level is not None:
            fields["esi_level"] = call.esi_level
        quiet = call.method.startswith(_QUIET_PREFIXES) and code is grpc.StatusCode.OK
        log.log(logging.DEBUG if quiet else logging.INFO, "call", extra={"fields": fields})


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return new_id()


def _status_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        # The caller's deadline passed while we answered: gRPC had ended the call, and writing to it failed
        # (ExecuteBatchError). The caller saw DEADLINE_EXCEEDED; so does the log.
        return grpc.StatusCode.DEADLINE_EXCEEDED
    # A caller that went away: writing to its stream fails with grpc's own error, not CancelledError.
    if isinstance(error, asyncio.CancelledError) or context.cancelled():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
