"""A grpc.aio server interceptor with one `intercept` hook for every kind of call.

grpc.aio hands interceptors a continuation that returns the method handler;
wrapping its behaviour for unary and streaming responses is the same few
lines every time, so they live here once (the approach of grpc-interceptor's
AsyncServerInterceptor). Wrapped handlers are cached per method.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

Context: TypeAlias = aio.ServicerContext[Any, Any]
Behaviour: TypeAlias = Callable[[Any, Context], Any]
Deserializer: TypeAlias = Callable[[bytes], Any] | None
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in typeshed


class ServerInterceptor(aio.ServerInterceptor, abc.ABC):
    """Subclasses implement `intercept`; this class does the handler plumbing."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    @abc.abstractmethod
    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        """Runs around one call.

        Call `method(request, context)` (or `call_through`): for a unary
        response it returns an awaitable, for a streaming response an async
        iterator. Return the response, or the async iterator of responses.
        """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED
        method_name = handler_call_details.method
        wrapped = self._wrapped.get(method_name)
        if wrapped is None:
            wrapped = self._wrapped[method_name] = self._wrap(handler, method_name)
        return wrapped

    def request_deserializer(self, deserializer: Deserializer) -> Deserializer:
        """Lets an interceptor replace how requests are parsed; unchanged by default."""
        return deserializer

    def _wrap(self, handler: Handler, method_name: str) -> Handler:
        # For a client stream, `request` is the iterator of requests.
        kind = _KINDS[handler.request_streaming, handler.response_streaming]
        # grpc.aio handlers hold coroutine functions; typeshed types them as sync.
        inner: Behaviour = getattr(handler, kind)
        if handler.response_streaming:

            async def stream_behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
                responses = await self.intercept(inner, request, context, method_name)
                async for response in responses:
                    yield response

            behaviour: Behaviour = stream_behaviour
        else:

            async def unary_behaviour(request: Any, context: Context) -> Any:
                return await self.intercept(inner, request, context, method_name)

            behaviour = unary_behaviour
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        wrapped: Handler = factory(
            behaviour,
            request_deserializer=self.request_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        return wrapped


_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


async def call_through(method: Behaviour, request: Any, context: Context) -> Any:
    """Calls the next behaviour: awaits a unary response, passes a stream through."""
    response = method(request, context)
    if inspect.isawaitable(response):
        return await response
    return response
