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
from typing import Any

import grpc
from grpc import aio

Behaviour = Callable[[Any, aio.ServicerContext[Any, Any]], Any]


class ServerInterceptor(aio.ServerInterceptor, abc.ABC):
    """Subclasses implement `intercept`; this class does the handler plumbing."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    @abc.abstractmethod
    async def intercept(
        self,
        method: Behaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> Any:
        """Runs around one call.

        Call `method(request, context)`: for a unary response it returns an
        awaitable; for a streaming response, an async iterator. Return what
        the call should answer (an awaited response, or an async iterator).
        """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method_name: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or handler.request_streaming:
            # No method or a client-streaming one: the service defines none yet.
            return handler
        wrapped = self._wrapped.get(method_name)
        if wrapped is None:
            wrapped = self._wrap(handler, method_name)
            self._wrapped[method_name] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method_name: str) -> grpc.RpcMethodHandler:
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def stream_behaviour(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                responses = await self.intercept(inner_stream, request, context, method_name)
                async for response in responses:
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream_behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_unary = handler.unary_unary

        async def unary_behaviour(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            return await self.intercept(inner_unary, request, context, method_name)

        return grpc.unary_unary_rpc_method_handler(
            unary_behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def call_through(method: Behaviour, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
    """Calls the next behaviour: awaits a unary response, passes a stream through."""
    response = method(request, context)
    if inspect.isawaitable(response):
        return await response
    return response
