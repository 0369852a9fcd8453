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

from server.cache import ResponseCache, cache_key
from server.calls import Role, current_call
from server.case_vault import CaseVault
from server.domain import Case, RunContext, StepResult
from server.errors import FailedPrecondition, InvalidArgument, NotFound, field_violation
from server.ids import new_id
from server.pipeline.advice import Narration
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RuntimeConfigs
from server.services.convert import fill_classification
from server.store.audit import AuditLog, AuditRecord, SealedCase
from server.validation import validate_case
from triage.v1 import case_pb2, classification_pb2

CLASSIFY_METHOD = "/triage.v1.ClassifyService/Classify"


def run_context() -> RunContext:
    """What the pipeline gets from the call being served: its deadline, caller and cost ledger."""
    call = current_call()
    return call.run_context() if call is not None else RunContext()


class Classifier:
    """Runs the pipeline for one request and records the decision."""

    def __init__(
        self,
        pipeline: Pipeline,
        audit: AuditLog,
        secret: bytes,
        configs: RuntimeConfigs,
        cache: ResponseCache,
        vault: CaseVault | None = None,
    ) -> None:
        self._vault = vault
        self._cache = cache
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
        return self._pipeline.steps(case, self._configs.current, run_context())

    async def narrative(self, case: Case, steps: Sequence[StepResult], narration: Narration) -> AsyncIterator[str]:
        """The configured model's narrative of the result, in chunks; nothing when none is configured."""
        advisor = self._pipeline.advisor
        if advisor is None:
            return
        result = self._pipeline.result(steps)
        summary = f"ESI {result.esi_level}. {result.rationale}"
        async for text in advisor.narrate(case, summary, self._configs.current, narration, run_context()):
            yield text

    async def stored_case(self, classification_id: str) -> case_pb2.TriageCase:
        """The case of an earlier classification, for its caller (or an admin) only."""
        if self._vault is None:
            raise FailedPrecondition(
                "explaining an earlier classification needs stored cases, and this server stores none "
                "(case storage needs TRIAGE_ENCRYPTION_KEY); send the case instead"
            )
        call = current_call()
        principal = call.principal if call is not None else None
        stored = await self._audit.stored_case(classification_id)
        # Another caller's case is reported missing, not forbidden: its existence is not theirs to know.
        allowed = (
            principal is None
            or principal.role is Role.ADMIN
            or (stored is not None and stored.account == principal.account)
        )
        if stored is None or not allowed:
            raise NotFound(f"no stored case for classification {classification_id}")
        opened = self._vault.open(stored.key_fingerprint, classification_id, stored.nonce, stored.ciphertext)
        if opened is None:
            raise FailedPrecondition(
                f"the case of {classification_id} was sealed with another encryption key "
                f"(fingerprint {stored.key_fingerprint}), not in this server's ring; it cannot be read"
            )
        return case_pb2.TriageCase.FromString(opened)

    async def classify(self, message: case_pb2.TriageCase, case: Case, into: classification_pb2.Classification) -> None:
        """Classify: from the response cache when the same case was classified under this configuration."""
        config = self._configs.current
        key = None
        if self._cache.enabled:
            key = cache_key(self._secret, message, config.version, self._pipeline.engine.version)
            cached = await self._cache.get(key)
            if cached is not None:
                into.MergeFromString(cached)
                classified_at = self._stamp(into, message.case_ref)
                await self._record(message, into, CLASSIFY_METHOD, classified_at, cache_hit=True)
                return
        steps = [step async for step in self._pipeline.steps(case, config, run_context())]
        await self.finish(message, steps, CLASSIFY_METHOD, into)
        if key is not None:
            stored = classification_pb2.Classification()
            stored.CopyFrom(into)
            # What the next caller gets anew: its own id, time and case_ref; a hit costs nothing.
            for name in ("classification_id", "classified_at", "case_ref", "cost"):
                stored.ClearField(name)
            await self._cache.put(key, stored.SerializeToString())

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
        fill_classification(into, result)
        classified_at = self._stamp(into, message.case_ref)
        await self._record(message, into, method, classified_at, cache_hit=False)

    @staticmethod
    def _stamp(classification: classification_pb2.Classification, case_ref: str) -> datetime:
        classified_at = datetime.now(UTC)
        classification.classification_id = new_id(int(classified_at.timestamp() * 1000))
        classification.classified_at.FromDatetime(classified_at)
        classification.case_ref = case_ref
        return classified_at

    async def _record(
        self,
        message: case_pb2.TriageCase,
        classification: classification_pb2.Classification,
        method: str,
        classified_at: datetime,
        *,
        cache_hit: bool,
    ) -> None:
        """Writes the audit record; returns once it is durable."""
        serialized = message.SerializeToString(deterministic=True)
        call = current_call()
        principal = call.principal if call is not None else None
        account = principal.account if principal is not None else ""
        sealed = None
        if self._vault is not None:
            nonce, ciphertext = self._vault.seal(classification.classification_id, serialized)
            sealed = SealedCase(classification.classification_id, account, self._vault.fingerprint, nonce, ciphertext)
        cost = classification.cost
        record = AuditRecord(
            classification_id=classification.classification_id,
            recorded_at=classified_at,
            method=method,
            esi_level=classification.esi_level,
            decided_at=classification.decided_at,
            finding_codes=" ".join(f.code for f in classification.findings),
            ruleset_version=classification.pipeline.ruleset_version,
            input_hmac_sha256=hmac.new(self._secret, serialized, hashlib.sha256).hexdigest(),
            confidence=classification.confidence,
            case_ref=message.case_ref,
            key_id=account,
            request_id=call.request_id if call is not None else "",
            cost_usd_micros=cost.usd_micros,
            input_tokens=cost.input_tokens,
            output_tokens=cost.output_tokens,
            cache_hit=cache_hit,
        )
        await self._audit.record(record, sealed)
        if call is not None:
            call.esi_level = classification.esi_level
