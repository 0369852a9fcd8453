"""What Classify and Explain share: validate, run the pipeline, audit, answer.

The classification is in the audit log before it is returned; if it cannot
be recorded the call fails with UNAVAILABLE and nothing is acknowledged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from server.calls import current_call
from server.errors import InvalidArgument, field_violation
from server.ids import new_id
from server.pipeline.advice import Narration
from server.pipeline.model import Case, StepResult
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RuntimeConfigs
from server.services.convert import fill_classification
from server.store.audit import AuditLog
from server.validation import validate_case
from triage.v1 import case_pb2, classification_pb2


class Classifier:
    """Runs the pipeline for one request and records the decision."""

    def __init__(self, pipeline: Pipeline, audit: AuditLog, secret: bytes, configs: RuntimeConfigs) -> None:
        self._pipeline = pipeline
        self._audit = audit
        self._secret = secret
        self._configs = configs

    def validate(self, message: case_pb2.TriageCase, present: bool) -> Case:
        """The validated case; INVALID_ARGUMENT when absent or malformed."""
        if not present:
            raise InvalidArgument([field_violation("case", "the case is required", "REQUIRED")])
        return validate_case(message)

    def steps(self, case: Case) -> AsyncIterator[StepResult]:
        return self._pipeline.steps(case, self._configs.current)

    async def narrative(self, case: Case, steps: Sequence[StepResult], narration: Narration) -> AsyncIterator[str]:
        """The configured model's narrative of the result, in chunks; nothing when none is configured."""
        advisor = self._pipeline.advisor
        if advisor is None:
            return
        result = self._pipeline.result(steps)
        summary = f"ESI {result.esi_level}. {result.rationale}"
        async for text in advisor.narrate(case, summary, self._configs.current, narration):
            yield text

    async def finish(
        self,
        message: case_pb2.TriageCase,
        steps: Sequence[StepResult],
        method: str,
        into: classification_pb2.Classification,
        narration: Narration | None = None,
    ) -> None:
        """Fills the classification into `into` (a field of the response) once it is recorded."""
        result = self._pipeline.result(steps)
        if narration is not None:
            warnings = (narration.warning,) if narration.warning is not None else ()
            result = dataclasses.replace(
                result, cost=result.cost + narration.cost, warnings=(*result.warnings, *warnings)
            )
        classified_at = datetime.now(UTC)
        classification_id = new_id(int(classified_at.timestamp() * 1000))
        digest = hmac.new(self._secret, message.SerializeToString(deterministic=True), hashlib.sha256).hexdigest()
        cost = result.cost
        call = current_call()
        principal = call.principal if call is not None else None
        await self._audit.record(
            {
                "classification_id": classification_id,
                "recorded_at": classified_at,
                "method": method,
                "esi_level": result.esi_level,
                "decided_at": result.decided_at,
                "finding_codes": " ".join(f.code for f in result.findings),
                "ruleset_version": result.ruleset_version,
                "input_hmac_sha256": digest,
                "confidence": result.confidence,
                "case_ref": message.case_ref,
                "key_id": principal.account if principal is not None else "",
                "request_id": call.request_id if call is not None else "",
                "cost_usd_micros": cost.usd_micros,
                "input_tokens": cost.input_tokens,
                "output_tokens": cost.output_tokens,
                "cache_hit": False,
            }
        )
        if call is not None:
            call.esi_level = result.esi_level
        fill_classification(
            into, result, classification_id=classification_id, classified_at=classified_at, case_ref=message.case_ref
        )
