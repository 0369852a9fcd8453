"""ExplainService: the same pipeline as Classify, streamed one step at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from server.errors import InvalidArgument, field_violation
from server.ids import is_id
from server.pipeline.advice import Narration
from server.services.classifier import Classifier
from server.services.convert import fill_step_event
from triage.v1 import explain_service_pb2, explain_service_pb2_grpc

EXPLAIN_METHOD = "/triage.v1.ExplainService/Explain"


class ExplainService(explain_service_pb2_grpc.ExplainServiceServicer):
    """Streams each decision point as it completes, then the classification."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier

    async def Explain(  # noqa: N802 - the RPC's name
        self, request: explain_service_pb2.ExplainRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[explain_service_pb2.ExplainResponse]:
        subject = request.WhichOneof("subject")
        message = request.case
        if subject == "classification_id":
            if not is_id(request.classification_id):
                raise InvalidArgument(
                    [field_violation("classification_id", "must be a 26-character classification id", "INVALID_FORMAT")]
                )
            # The stored case, explained afresh (under the current configuration) as a new classification.
            message = await self._classifier.stored_case(request.classification_id)
        case = self._classifier.validate(message, subject is not None)
        steps = []
        async for step in self._classifier.steps(case):
            steps.append(step)
            event = explain_service_pb2.ExplainResponse()
            fill_step_event(event.step, step)
            yield event
        narration = Narration()
        async for text in self._classifier.narrative(case, steps, narration):
            chunk = explain_service_pb2.ExplainResponse()
            chunk.narrative.text = text
            yield chunk
        final = explain_service_pb2.ExplainResponse()
        await self._classifier.finish(message, steps, EXPLAIN_METHOD, into=final.classification, narration=narration)
        yield final
