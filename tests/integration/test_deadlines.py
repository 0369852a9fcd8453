"""Deadlines: defaults, the maximum, refusing calls out of time, stopping between steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from interceptors.deadline import DeadlineInterceptor
from interceptors.errors import ErrorInterceptor
from interceptors.observability import ObservabilityInterceptor
from server.app import TriageServer
from server.calls import CallState, begin_call, current_call
from server.config import Settings
from server.domain import STEP_HIGH_RISK, STEP_RESOURCES, DeadlineExceeded, Step, StepResult
from server.esi.engine import RulesEngine
from server.pipeline.pipeline import Pipeline, RulesBackend, TriageRun
from server.validation import validate_case
from tests.support import make_case
from triage_client import AsyncTriageClient
from triage_client import DeadlineExceeded as ClientDeadlineExceeded

SLOW = "/test.v1.Deadlines/Slow"


async def _remaining(request: bytes, context: Any) -> bytes:
    """Reports the deadline the interceptor set; sleeps as long as the request says."""
    call = current_call()
    assert call is not None
    remaining = call.remaining_seconds()
    await asyncio.sleep(float(request or b"0"))
    return f"{remaining:.3f}".encode()


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(3):
        await asyncio.sleep(float(request or b"0"))
        yield b"tick"


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """A real server with the deadline interceptor alone: Slow defaults to 0.5 s, none may run over 1 s."""
    deadline = DeadlineInterceptor({SLOW: 0.5}, fallback_seconds=0.7, maximum_seconds=1.0, minimum_seconds=0.2)
    server = aio.server(interceptors=[ObservabilityInterceptor(), ErrorInterceptor(), deadline])
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Slow": grpc.unary_unary_rpc_method_handler(_remaining),
        "Other": grpc.unary_unary_rpc_method_handler(_remaining),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.v1.Deadlines", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def _unary(target: str, method: str, sleep_seconds: float = 0.0, timeout: float | None = None) -> float:
    async with aio.insecure_channel(target) as channel:
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        return float(await call(str(sleep_seconds).encode(), timeout=timeout))


@pytest.mark.parametrize(
    ("method", "timeout", "expected"),
    [
        (SLOW, None, 0.5),  # the method's default
        ("/test.v1.Deadlines/Other", None, 0.7),  # the default for other methods
        (SLOW, 0.8, 0.8),  # the caller's own
        (SLOW, 30.0, 1.0),  # capped at the maximum
    ],
    ids=["method-default", "fallback", "callers-own", "capped"],
)
async def test_every_call_gets_a_deadline(target: str, method: str, timeout: float | None, expected: float) -> None:
    assert await _unary(target, method, timeout=timeout) == pytest.approx(expected, abs=0.05)


async def test_the_deadline_is_enforced_when_the_caller_set_none(target: str) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await _unary(target, SLOW, sleep_seconds=5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "expired" in str(raised.value.details())


async def test_a_stream_stops_at_its_deadline(target: str) -> None:
    async with aio.insecure_channel(target) as channel:
        stream: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream("/test.v1.Deadlines/Stream")
        call = stream(b"0.3")  # three ticks of 0.3 s against the 0.7 s default
        received = [await call.read(), await call.read()]
        with pytest.raises(aio.AioRpcError) as raised:
            await call.read()
    assert received == [b"tick", b"tick"]
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_call_arriving_with_too_little_time_is_refused_before_any_work(target: str) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await _unary(target, SLOW, timeout=0.1)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's refusal, not the client giving up.
    assert "arrived with" in str(raised.value.details())


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"min_deadline_seconds": 0.5})


async def test_the_service_refuses_short_deadlines_and_records_nothing(
    server: TriageServer, client: AsyncTriageClient
) -> None:
    with pytest.raises(ClientDeadlineExceeded, match="arrived with"):
        await client.classify(make_case("chest pain", "60y"), timeout=0.3)
    assert [e async for e in client.iter_audit_events()] == []


class SlowHighRisk:
    """Step B answered by the rules, slowly, as a model backend might."""

    def __init__(self, rules: RulesBackend, delay_seconds: float) -> None:
        self._rules = rules
        self._delay = delay_seconds
        self.asked: list[Step] = []

    @property
    def name(self) -> str:
        return "slow"

    async def answer(self, step: Step, run: TriageRun) -> StepResult:
        self.asked.append(step)
        await asyncio.sleep(self._delay)
        return await self._rules.answer(step, run)


async def test_the_pipeline_checks_the_deadline_between_steps(engine: RulesEngine) -> None:
    slow = SlowHighRisk(RulesBackend(engine), delay_seconds=0.2)
    pipeline = Pipeline(engine, backends={STEP_HIGH_RISK: slow, STEP_RESOURCES: slow})
    case = validate_case(make_case("ankle sprain", "30y"))
    call = CallState(method="test", request_id="r", peer="p")
    call.deadline = call.started + 0.1
    begin_call(call)

    with pytest.raises(DeadlineExceeded):
        [step async for step in pipeline.steps(case, context=call.run_context())]
    # Step B ran past the deadline; step C was never asked.
    assert slow.asked == [STEP_HIGH_RISK]
