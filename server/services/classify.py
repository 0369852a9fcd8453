"""ClassifyService: one case in, one audited classification out."""

from __future__ import annotations

from typing import Any

from grpc import aio

from server.services.classifier import Classifier
from triage.v1 import classify_service_pb2, classify_service_pb2_grpc

CLASSIFY_METHOD = "/triage.v1.ClassifyService/Classify"


class ClassifyService(classify_service_pb2_grpc.ClassifyServiceServicer):
    """Suggests an ESI level for a case."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier

    async def Classify(  # noqa: N802 - the RPC's name
        self, request: classify_service_pb2.ClassifyRequest, context: aio.ServicerContext[Any, Any]
    ) -> classify_service_pb2.ClassifyResponse:
        case = self._classifier.validate(request.case, request.HasField("case"))
        steps = [step async for step in self._classifier.steps(case)]
        response = classify_service_pb2.ClassifyResponse()
        await self._classifier.finish(request.case, steps, CLASSIFY_METHOD, into=response.classification)
        return response
