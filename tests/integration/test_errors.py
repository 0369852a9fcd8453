"""Exceptions become statuses in one place, and their text never reaches a log or a caller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from interceptors.errors import ErrorInterceptor
from server.errors import ResourceExhausted
from triage_client import Internal, from_rpc_error
from triage_client import ResourceExhausted as ClientResourceExhausted

MARKER = "patient-marker-9c1e"


async def _fail(request: bytes, context: Any) -> bytes:
    raise RuntimeError(f"KeyError on complaint {MARKER}")


async def _quota(request: bytes, context: Any) -> bytes:
    raise ResourceExhausted("over the limit", subject="key:test", description="20/day", retry_after=None)


async def _stream_fail(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise ValueError(MARKER)


def _unary(channel: aio.Channel, method: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/test.v1.Errors/{method}")


@pytest.fixture
async def target() -> AsyncIterator[str]:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Quota": grpc.unary_unary_rpc_method_handler(_quota),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream_fail),
    }
    server = aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.v1.Errors", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_unexpected_errors_are_internal_and_say_nothing(target: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="triage.errors")
    async with aio.insecure_channel(target) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await _unary(channel, "Fail")(b"")

    error = from_rpc_error(raised.value)
    assert isinstance(error, Internal)
    assert MARKER not in error.message
    record = caplog.records[-1]
    assert record.fields["error_type"] == "RuntimeError"  # type: ignore[attr-defined]
    assert "_fail" in record.fields["location"]  # type: ignore[attr-defined]
    assert MARKER not in caplog.text


async def test_errors_in_the_middle_of_a_stream_become_a_status(target: str, caplog: pytest.LogCaptureFixture) -> None:
    async with aio.insecure_channel(target) as channel:
        stream: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream("/test.v1.Errors/Stream")
        call = stream(b"")
        assert await call.read() == b"first"
        with pytest.raises(aio.AioRpcError) as raised:
            await call.read()

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert MARKER not in caplog.text


async def test_service_errors_keep_their_code_and_details(target: str) -> None:
    async with aio.insecure_channel(target) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await _unary(channel, "Quota")(b"")

    error = from_rpc_error(raised.value)
    assert isinstance(error, ClientResourceExhausted)
    assert [(v.subject, v.description) for v in error.quota_violations] == [("key:test", "20/day")]
