"""A bare grpc.aio server with the triage contract that does no work per call.

It answers Classify and Explain with responses the real engine produced once,
at startup, for the benchmark's own cases: the same message sizes and the same
serialization work as the triage server, without validation, rules, audit or
interceptors. The ratio of the two is what the service itself costs. With
`--noop-interceptors N` it runs N interceptors that do nothing: what the
interceptor mechanism alone costs, apart from the work interceptors do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from grpc import aio

from interceptors.base import Behaviour, Context, ServerInterceptor, call_through
from server.domain import StepResult
from server.esi.engine import RulesEngine
from server.pipeline.pipeline import Pipeline
from server.reflection import enable_reflection
from server.services.convert import fill_classification, fill_step_event
from server.validation import validate_case
from triage.v1 import (
    classification_pb2,
    classify_service_pb2,
    classify_service_pb2_grpc,
    explain_service_pb2,
    explain_service_pb2_grpc,
)

HERE = Path(__file__).parent


async def canned_responses() -> tuple[classify_service_pb2.ClassifyResponse, list[explain_service_pb2.ExplainResponse]]:
    """The responses the engine gives the benchmark's cases (bench/*.json)."""
    pipeline = Pipeline(RulesEngine())
    runs: list[tuple[list[StepResult], classification_pb2.Classification]] = []
    for config in ("classify.json", "explain.json"):
        request = json_format.ParseDict(
            json.loads((HERE / config).read_text())["data"], classify_service_pb2.ClassifyRequest()
        )
        steps = [step async for step in pipeline.steps(validate_case(request.case))]
        classification = classification_pb2.Classification()
        fill_classification(classification, pipeline.result(steps))
        classification.classification_id = "01KBENCHMARK0000000000000"
        classification.classified_at.FromDatetime(datetime.now(UTC))
        classification.case_ref = "bench-1"
        runs.append((steps, classification))
    classify = classify_service_pb2.ClassifyResponse()
    classify.classification.CopyFrom(runs[0][1])
    explain = []
    for step in runs[1][0]:
        event = explain_service_pb2.ExplainResponse()
        fill_step_event(event.step, step)
        explain.append(event)
    final = explain_service_pb2.ExplainResponse()
    final.classification.CopyFrom(runs[1][1])
    explain.append(final)
    return classify, explain


class EchoClassify(classify_service_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, response: classify_service_pb2.ClassifyResponse) -> None:
        self._response = response

    async def Classify(self, request: Any, context: Any) -> classify_service_pb2.ClassifyResponse:  # noqa: N802
        return self._response


class EchoExplain(explain_service_pb2_grpc.ExplainServiceServicer):
    def __init__(self, responses: list[explain_service_pb2.ExplainResponse]) -> None:
        self._responses = responses

    async def Explain(  # noqa: N802
        self, request: Any, context: Any
    ) -> AsyncIterator[explain_service_pb2.ExplainResponse]:
        for response in self._responses:
            yield response


class NoopInterceptor(ServerInterceptor):
    """Passes every call through: the cost of being an interceptor, without its work."""

    async def intercept(self, method: Behaviour, request: Any, context: Context, method_name: str) -> Any:
        return await call_through(method, request, context)


async def serve(port: int, noop_interceptors: int) -> None:
    classify, explain = await canned_responses()
    server = aio.server(interceptors=[NoopInterceptor() for _ in range(noop_interceptors)])
    classify_service_pb2_grpc.add_ClassifyServiceServicer_to_server(EchoClassify(classify), server)
    explain_service_pb2_grpc.add_ExplainServiceServicer_to_server(EchoExplain(explain), server)
    enable_reflection(server, ("triage.v1.ClassifyService", "triage.v1.ExplainService"))
    # SO_REUSEPORT is on by default in gRPC: several echo processes may share the port.
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"event": "serving", "port": bound}), flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--noop-interceptors", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.noop_interceptors))


if __name__ == "__main__":
    main()
