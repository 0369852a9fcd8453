"""Conversions between the pipeline's domain types and the contract's messages."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from server.pipeline.model import Cost, Finding, PredictedResource, StepResult, TriageResult, Warning
from server.store.models import AuditEvent
from triage.v1 import admin_service_pb2, classification_pb2, explain_service_pb2


def cost_message(cost: Cost) -> classification_pb2.Cost:
    return classification_pb2.Cost(
        usd_micros=cost.usd_micros, input_tokens=cost.input_tokens, output_tokens=cost.output_tokens
    )


def finding_messages(findings: Iterable[Finding]) -> list[classification_pb2.Finding]:
    return [
        classification_pb2.Finding(code=f.code, text=f.text, step=f.step, input_field=f.input_field) for f in findings
    ]


def _resources(resources: Iterable[PredictedResource]) -> list[classification_pb2.PredictedResource]:
    return [
        classification_pb2.PredictedResource(kind=r.kind, detail=r.detail, reason=r.reason, input_field=r.input_field)
        for r in resources
    ]


def _warnings(warnings: Iterable[Warning]) -> list[classification_pb2.Warning]:
    return [classification_pb2.Warning(code=w.code, input_field=w.input_field, text=w.text) for w in warnings]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def step_event(result: StepResult) -> explain_service_pb2.StepEvent:
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(int(result.elapsed_seconds * 1e9))
    return explain_service_pb2.StepEvent(
        step=result.step,
        question=result.question,
        answer=result.answer,
        evidence=finding_messages(result.findings),
        backend=result.backend,
        elapsed=elapsed,
        cost=cost_message(result.cost),
        decisive=result.level is not None,
        esi_level=classification_pb2.EsiLevel.ValueType(result.level or 0),
    )


def classification_message(
    result: TriageResult, *, classification_id: str, classified_at: datetime, case_ref: str
) -> classification_pb2.Classification:
    return classification_pb2.Classification(
        classification_id=classification_id,
        esi_level=classification_pb2.EsiLevel.ValueType(result.esi_level),
        confidence=result.confidence,
        decided_at=result.decided_at,
        findings=finding_messages(result.findings),
        predicted_resources=_resources(result.resources),
        resource_count=result.resource_count,
        warnings=_warnings(result.warnings),
        rationale=result.rationale,
        pipeline=classification_pb2.PipelineInfo(
            ruleset_version=result.ruleset_version,
            step_backends=[classification_pb2.StepBackend(step=s.step, backend=s.backend) for s in result.steps],
        ),
        cost=cost_message(result.cost),
        classified_at=timestamp(classified_at),
        case_ref=case_ref,
    )


def audit_event_message(event: AuditEvent) -> admin_service_pb2.AuditEvent:
    recorded_at = event.recorded_at
    if recorded_at.tzinfo is None:
        # SQLite returns naive datetimes; the store writes UTC only.
        recorded_at = recorded_at.replace(tzinfo=UTC)
    return admin_service_pb2.AuditEvent(
        classification_id=event.classification_id,
        recorded_at=timestamp(recorded_at),
        method=event.method,
        esi_level=event.esi_level,  # type: ignore[arg-type]
        decided_at=event.decided_at,  # type: ignore[arg-type]
        finding_codes=event.finding_codes.split(),
        ruleset_version=event.ruleset_version,
        input_hmac_sha256=event.input_hmac_sha256,
        case_ref=event.case_ref,
        key_id=event.key_id,
        request_id=event.request_id,
        cost=classification_pb2.Cost(
            usd_micros=event.cost_usd_micros, input_tokens=event.input_tokens, output_tokens=event.output_tokens
        ),
        cache_hit=event.cache_hit,
        confidence=event.confidence,
    )
