"""Conversions between the pipeline's domain types and the contract's messages."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time

from google.protobuf import timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from server.calls import Role
from server.domain import Cost, Finding, StepResult, TriageResult
from server.runtime_config import STEP_FIELDS, Price, RuntimeConfig, StepPolicy
from server.store.models import ApiKeyRecord, AuditEvent, UsageTotal
from triage.v1 import admin_service_pb2, classification_pb2, explain_service_pb2


def _fill_cost(target: classification_pb2.Cost, cost: Cost) -> None:
    target.usd_micros = cost.usd_micros
    target.input_tokens = cost.input_tokens
    target.output_tokens = cost.output_tokens


def _add_findings(
    target: RepeatedCompositeFieldContainer[classification_pb2.Finding], findings: Iterable[Finding]
) -> None:
    for f in findings:
        target.add(code=f.code, text=f.text, step=f.step, input_field=f.input_field)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# The fill_* functions write into a message the caller already holds (a field
# of the response): assigning a finished message to a field would copy it.


def fill_step_event(target: explain_service_pb2.StepEvent, result: StepResult) -> None:
    target.step = result.step
    target.question = result.question
    target.answer = result.answer
    _add_findings(target.evidence, result.findings)
    target.backend = result.backend
    target.elapsed.FromNanoseconds(int(result.elapsed_seconds * 1e9))
    _fill_cost(target.cost, result.cost)
    target.decisive = result.level is not None
    target.esi_level = classification_pb2.EsiLevel.ValueType(result.level or 0)


def fill_classification(target: classification_pb2.Classification, result: TriageResult) -> None:
    """Everything but the id, the time and the case_ref, which are stamped when it is recorded."""
    target.esi_level = classification_pb2.EsiLevel.ValueType(result.esi_level)
    target.confidence = result.confidence
    target.decided_at = result.decided_at
    _add_findings(target.findings, result.findings)
    for r in result.resources:
        target.predicted_resources.add(kind=r.kind, detail=r.detail, reason=r.reason, input_field=r.input_field)
    target.resource_count = result.resource_count
    for w in result.warnings:
        target.warnings.add(code=w.code, input_field=w.input_field, text=w.text)
    target.rationale = result.rationale
    target.pipeline.ruleset_version = result.ruleset_version
    for step in result.steps:
        target.pipeline.step_backends.add(step=step.step, backend=step.backend)
    _fill_cost(target.cost, result.cost)


def audit_event_message(event: AuditEvent) -> admin_service_pb2.AuditEvent:
    recorded_at = event.recorded_at
    if recorded_at.tzinfo is None:
        # SQLite returns naive datetimes; the store writes UTC only.
        recorded_at = recorded_at.replace(tzinfo=UTC)
    return admin_service_pb2.AuditEvent(
        classification_id=event.classification_id,
        recorded_at=timestamp(recorded_at),
        method=event.method,
        esi_level=classification_pb2.EsiLevel.ValueType(event.esi_level),
        decided_at=classification_pb2.Step.ValueType(event.decided_at),
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


def role_message(role: Role) -> admin_service_pb2.Role.ValueType:
    return admin_service_pb2.Role.Value(f"ROLE_{role.value.upper()}")


def role_from_message(value: admin_service_pb2.Role.ValueType) -> Role | None:
    """The role, or None for ROLE_UNSPECIFIED and values this server does not know."""
    name = admin_service_pb2.Role.Name(value) if value in admin_service_pb2.Role.values() else ""
    return Role(name.removeprefix("ROLE_").lower()) if name and value else None


def api_key_message(record: ApiKeyRecord) -> admin_service_pb2.ApiKey:
    message = admin_service_pb2.ApiKey(
        key_id=record.key_id,
        name=record.name,
        role=role_message(Role(record.role)),
        rate_limit=record.rate_limit,
        monthly_budget_usd_micros=record.monthly_budget_usd_micros,
        refuse_over_budget=record.refuse_over_budget,
        created_at=timestamp(record.created_at),
    )
    if record.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(record.expires_at))
    if record.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(record.revoked_at))
    return message


_STRATEGIES: dict[str, admin_service_pb2.Strategy.ValueType] = {
    "rules": admin_service_pb2.STRATEGY_RULES,
    "model": admin_service_pb2.STRATEGY_MODEL,
    "most_urgent": admin_service_pb2.STRATEGY_MOST_URGENT,
}
_DANGER_ZONE: dict[str, admin_service_pb2.DangerZonePolicy.ValueType] = {
    "up_triage": admin_service_pb2.DANGER_ZONE_POLICY_UP_TRIAGE,
    "flag_only": admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY,
    "learned": admin_service_pb2.DANGER_ZONE_POLICY_LEARNED,
}


def config_message(config: RuntimeConfig) -> admin_service_pb2.Config:
    message = admin_service_pb2.Config(
        version=config.version,
        danger_zone_policy=_DANGER_ZONE[config.danger_zone_policy],
        global_monthly_budget_usd_micros=config.global_monthly_budget_usd_micros,
        updated_by=config.updated_by,
    )
    for step in STEP_FIELDS:
        policy: StepPolicy = getattr(config, step)
        getattr(message, step).CopyFrom(
            admin_service_pb2.StepPolicy(backend=policy.backend, strategy=_STRATEGIES[policy.strategy])
        )
    message.prices.extend(
        admin_service_pb2.BackendPrice(
            backend=name,
            input_usd_micros_per_million_tokens=price.input_usd_micros_per_million_tokens,
            output_usd_micros_per_million_tokens=price.output_usd_micros_per_million_tokens,
        )
        for name, price in sorted(config.prices.items())
    )
    message.default_rate_limits.extend(
        admin_service_pb2.RoleRateLimit(role=role_message(role), rate_limit=limit)
        for role, limit in sorted(config.default_rate_limits.items(), key=lambda item: list(Role).index(item[0]))
    )
    if config.updated_at is not None:
        message.updated_at.CopyFrom(timestamp(config.updated_at))
    return message


def config_values(message: admin_service_pb2.Config) -> dict[str, object]:
    """RuntimeConfig fields from a Config message, but the rate limits, which UpdateConfig merges role by role.

    Enum zero values mean the defaults; values this server does not know are refused before (check_enum).
    """
    strategies = {value: name for name, value in _STRATEGIES.items()}
    danger_zone = {value: name for name, value in _DANGER_ZONE.items()}
    values: dict[str, object] = {
        step: {
            "backend": getattr(message, step).backend or "rules",
            "strategy": strategies.get(getattr(message, step).strategy, "rules"),
        }
        for step in STEP_FIELDS
    }
    values["danger_zone_policy"] = danger_zone.get(message.danger_zone_policy, "up_triage")
    values["prices"] = {
        price.backend: {
            "input_usd_micros_per_million_tokens": price.input_usd_micros_per_million_tokens,
            "output_usd_micros_per_million_tokens": price.output_usd_micros_per_million_tokens,
        }
        for price in message.prices
    }
    values["global_monthly_budget_usd_micros"] = message.global_monthly_budget_usd_micros
    return values


_CIRCUITS = {
    "closed": admin_service_pb2.CIRCUIT_STATE_CLOSED,
    "open": admin_service_pb2.CIRCUIT_STATE_OPEN,
    "half_open": admin_service_pb2.CIRCUIT_STATE_HALF_OPEN,
}


def backend_message(name: str, price: Price | None, circuit: str) -> admin_service_pb2.Backend:
    message = admin_service_pb2.Backend(name=name, circuit_state=_CIRCUITS[circuit])
    message.price.backend = name
    if price is not None:
        message.price.input_usd_micros_per_million_tokens = price.input_usd_micros_per_million_tokens
        message.price.output_usd_micros_per_million_tokens = price.output_usd_micros_per_million_tokens
    return message


def usage_message(total: UsageTotal) -> admin_service_pb2.UsageRecord:
    return admin_service_pb2.UsageRecord(
        key_id=total.key_id,
        day_start=timestamp(datetime.combine(total.day, time.min, UTC)),
        step=classification_pb2.Step.ValueType(total.step),
        backend=total.backend,
        requests=total.requests,
        cost=classification_pb2.Cost(
            usd_micros=total.usd_micros, input_tokens=total.input_tokens, output_tokens=total.output_tokens
        ),
    )


def budget_message(
    key_id: str, limit_usd_micros: int, spent_usd_micros: int, month: date
) -> admin_service_pb2.BudgetStatus:
    return admin_service_pb2.BudgetStatus(
        key_id=key_id,
        limit_usd_micros=limit_usd_micros,
        spent_usd_micros=spent_usd_micros,
        month_start=timestamp(datetime.combine(month, time.min, UTC)),
    )
