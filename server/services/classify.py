"""ClassifyService: one case in, one audited classification out."""

from __future__ import annotations

from typing import Any

from grpc import aio

from server.services.classifier import CLASSIFY_METHOD, Classifier
from triage.v1 import classify_service_pb2, classify_service_pb2_grpc

__all__ = ["CLASSIFY_METHOD", "ClassifyService"]


class ClassifyService(classify_service_pb2_grpc.ClassifyServiceServicer):
    """Suggests an ESI level for a case."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier

    async def Classify(  # noqa: N802 - the RPC's name
        self, request: classify_service_pb2.ClassifyRequest, context: aio.ServicerContext[Any, Any]
    ) -> classify_service_pb2.ClassifyResponse:
        case = self._classifier.validate(request.case, request.HasField("case"))
        response = classify_service_pb2.ClassifyResponse()
        await self._classifier.classify(request.case, case, into=response.classification)
        return response
