"""AdminService: runtime configuration, backends, API keys, usage and the audit log."""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime, time, timedelta
from typing import Any

from google.rpc import error_details_pb2
from grpc import aio
from pydantic import ValidationError

from server.backends.registry import BackendRegistry
from server.budgets import month_start
from server.calls import Role, current_call
from server.errors import InvalidArgument, NotFound, field_violation
from server.identity.api_keys import ApiKeyAuthenticator, issue_key, key_violations
from server.ids import is_id
from server.rate_limits import rate_limit_problem
from server.runtime_config import LEARNED, RULES, STEP_FIELDS, RuntimeConfig, RuntimeConfigs, problems
from server.services.convert import (
    api_key_message,
    audit_event_message,
    backend_message,
    budget_message,
    config_message,
    config_values,
    role_from_message,
    usage_message,
)
from server.store.api_keys import ApiKeyStore
from server.store.audit import AuditLog
from server.store.usage import UsageStore
from server.validation import Violation, check_enum, duration_value, timestamp_value
from triage.v1 import admin_service_pb2, admin_service_pb2_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
_TOKEN_VERSION = "v1"
# The longest an API key may live: 100 years is any key's lifetime, and its expiry stays a valid date.
MAX_KEY_LIFETIME = timedelta(days=36_525)


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    """The operator's interface (admin role only)."""

    def __init__(
        self,
        audit: AuditLog,
        keys: ApiKeyStore,
        server_secret: bytes,
        authenticator: ApiKeyAuthenticator,
        configs: RuntimeConfigs,
        backends: BackendRegistry,
        usage: UsageStore,
    ) -> None:
        self._usage = usage
        self._configs = configs
        self._backends = backends
        self._audit = audit
        self._keys = keys
        self._secret = server_secret
        self._authenticator = authenticator

    async def ListAuditEvents(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListAuditEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListAuditEventsResponse:
        violations = _page_size_violations(request.page_size)
        start, end = _time_range(request, violations)
        if start is not None and end is not None and end <= start:
            violations.append(field_violation("end_time", "must be after start_time", "OUT_OF_RANGE"))
        after_id = None
        if request.page_token:
            after_id = _read_token(request.page_token, _range_key(start, end))
            if after_id is None:
                violations.append(
                    field_violation(
                        "page_token",
                        "is not a token from this listing; send next_page_token with the same time range",
                        "INVALID_TOKEN",
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        page = await self._audit.page(
            start=start, end=end, after_id=after_id, limit=request.page_size or DEFAULT_PAGE_SIZE
        )
        next_token = _make_token(page.events[-1].classification_id, _range_key(start, end)) if page.has_more else ""
        return admin_service_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_message(e) for e in page.events], next_page_token=next_token
        )

    async def GetConfig(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.GetConfigRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.GetConfigResponse:
        return admin_service_pb2.GetConfigResponse(config=config_message(self._configs.current))

    async def UpdateConfig(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.UpdateConfigRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.UpdateConfigResponse:
        paths = list(dict.fromkeys(request.update_mask.paths))  # each path once, in the caller's order
        fixed = [p for p in paths if p.split(".")[0] in _READ_ONLY_CONFIG]
        if not paths or fixed or not request.update_mask.IsValidForDescriptor(admin_service_pb2.Config.DESCRIPTOR):
            raise InvalidArgument(
                [
                    field_violation(
                        "update_mask",
                        "must name the fields to change, such as high_risk.backend; "
                        "version, updated_at and updated_by are set by the server",
                        "INVALID_MASK",
                    )
                ]
            )
        current = self._configs.current
        merged = config_message(current)
        request.update_mask.MergeMessage(
            request.config, merged, replace_message_field=True, replace_repeated_field=True
        )
        violations: list[Violation] = []
        limits = dict(current.default_rate_limits)
        if "default_rate_limits" in {p.split(".")[0] for p in paths}:
            limits |= _requested_rate_limits(request.config, violations)
        config = validated_config(merged, limits, self._backends, violations)
        call = current_call()
        principal = call.principal if call is not None else None
        who = principal.account if principal is not None else ""
        updated = await self._configs.update(
            config, expected_version=request.expected_version, changed_paths=paths, by=who
        )
        return admin_service_pb2.UpdateConfigResponse(config=config_message(updated))

    async def ListBackends(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListBackendsRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListBackendsResponse:
        config = self._configs.current
        routed = {getattr(config, step).backend for step in STEP_FIELDS}
        names = [RULES, LEARNED, *sorted((set(config.prices) | routed) - {RULES, LEARNED})]
        return admin_service_pb2.ListBackendsResponse(
            backends=[
                backend_message(name, config.price(name), self._backends.circuit_state(name))
                for name in names
                if self._backends.knows(name)
            ]
        )

    async def CreateApiKey(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.CreateApiKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.CreateApiKeyResponse:
        role = role_from_message(request.role)
        violations: list[Violation] = []
        expires_in = None
        if request.HasField("expires_in"):
            expires_in = duration_value(request.expires_in, "expires_in", violations, maximum=MAX_KEY_LIFETIME)
        violations += key_violations(
            request.name, role, request.rate_limit, expires_in, request.monthly_budget_usd_micros
        )
        if violations or role is None:
            raise InvalidArgument(violations)
        issued = await asyncio.to_thread(
            issue_key,
            self._keys,
            self._secret,
            name=request.name,
            role=role,
            rate_limit=request.rate_limit,
            expires_in=expires_in,
            monthly_budget_usd_micros=request.monthly_budget_usd_micros,
            refuse_over_budget=request.refuse_over_budget,
        )
        self._authenticator.remember(issued.record)
        return admin_service_pb2.CreateApiKeyResponse(api_key=api_key_message(issued.record), secret=issued.secret)

    async def ListApiKeys(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.ListApiKeysRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.ListApiKeysResponse:
        violations = _page_size_violations(request.page_size)
        after_id = None
        if request.page_token:
            after_id = _read_token(request.page_token, "api_keys")
            if after_id is None:
                violations.append(field_violation("page_token", "is not a token from this listing", "INVALID_TOKEN"))
        if violations:
            raise InvalidArgument(violations)
        page = await asyncio.to_thread(self._keys.page, after_id=after_id, limit=request.page_size or DEFAULT_PAGE_SIZE)
        next_token = _make_token(page.keys[-1].key_id, "api_keys") if page.has_more else ""
        return admin_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in page.keys], next_page_token=next_token
        )

    async def RevokeApiKey(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.RevokeApiKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        if not is_id(request.key_id):
            raise InvalidArgument([field_violation("key_id", "must be a 26-character key id", "INVALID_FORMAT")])
        record = await asyncio.to_thread(self._keys.revoke, request.key_id, datetime.now(UTC))
        if record is None:
            raise NotFound(f"no API key {request.key_id}")
        self._authenticator.remember(record)
        return admin_service_pb2.RevokeApiKeyResponse(api_key=api_key_message(record))

    async def GetUsage(  # noqa: N802 - the RPC's name
        self, request: admin_service_pb2.GetUsageRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_service_pb2.GetUsageResponse:
        now = datetime.now(UTC)
        month = month_start(now.date())
        violations: list[Violation] = []
        start, end = _time_range(request, violations)
        if request.key_id and not is_id(request.key_id):
            violations.append(field_violation("key_id", "must be empty or a 26-character key id", "INVALID_FORMAT"))
        if violations:
            raise InvalidArgument(violations)
        end = end or now
        first_day = start.date() if start is not None else month
        if end <= datetime.combine(first_day, time.min, UTC):
            raise InvalidArgument([field_violation("end_time", "must be after start_time", "OUT_OF_RANGE")])
        # Totals are kept per day: a range covers the days it touches.
        last_day = (end - timedelta(microseconds=1)).date()
        totals = await asyncio.to_thread(self._usage.totals, first_day, last_day, request.key_id or None)
        spent = await asyncio.to_thread(self._usage.spent_since, month)
        keys = await asyncio.to_thread(self._keys.all)
        budgets = [
            budget_message("", self._configs.current.global_monthly_budget_usd_micros, sum(spent.values()), month)
        ]
        budgets += [
            budget_message(key.key_id, key.monthly_budget_usd_micros, spent.get(key.key_id, 0), month)
            for key in keys
            if key.monthly_budget_usd_micros and request.key_id in ("", key.key_id)
        ]
        return admin_service_pb2.GetUsageResponse(usage=[usage_message(t) for t in totals], budgets=budgets)


def _range_key(start: datetime | None, end: datetime | None) -> str:
    return f"{start.isoformat() if start else ''}|{end.isoformat() if end else ''}"


_READ_ONLY_CONFIG = frozenset({"version", "updated_at", "updated_by"})


def _time_range(
    request: admin_service_pb2.ListAuditEventsRequest | admin_service_pb2.GetUsageRequest, violations: list[Violation]
) -> tuple[datetime | None, datetime | None]:
    """start_time and end_time when set and in range; a violation for each that is not."""
    start = timestamp_value(request.start_time, "start_time", violations) if request.HasField("start_time") else None
    end = timestamp_value(request.end_time, "end_time", violations) if request.HasField("end_time") else None
    return start, end


def _requested_rate_limits(config: admin_service_pb2.Config, violations: list[Violation]) -> dict[Role, str]:
    """The roles' limits in an UpdateConfig, to merge over the current ones; a violation for each bad entry.

    Merged role by role: an admin who sends the demo role's limit means to change that one, and every role
    must keep a default (each key without a limit of its own is counted against it), so a role left out
    keeps its current limit rather than being dropped.
    """
    limits: dict[Role, str] = {}
    seen: set[Role] = set()
    for index, entry in enumerate(config.default_rate_limits):
        path = f"config.default_rate_limits[{index}]"
        role = role_from_message(entry.role)
        if role is None:
            check_enum(
                violations, f"{path}.role", admin_service_pb2.Role.DESCRIPTOR, entry.role, allow_unspecified=False
            )
        elif role in seen:
            violations.append(field_violation(f"{path}.role", f"{role.value} is given twice", "DUPLICATE"))
        else:
            seen.add(role)
        problem = rate_limit_problem(entry.rate_limit)
        if problem is not None:
            violations.append(field_violation(f"{path}.rate_limit", problem, "INVALID_RATE_LIMIT"))
        elif role is not None:
            limits[role] = entry.rate_limit
    return limits


def validated_config(
    message: admin_service_pb2.Config,
    rate_limits: dict[Role, str],
    backends: BackendRegistry,
    violations: list[Violation],
) -> RuntimeConfig:
    """The whole configuration `message` describes (with `rate_limits`), or INVALID_ARGUMENT naming every field
    that would break a call: these, and the `violations` found before."""
    for step in STEP_FIELDS:
        check_enum(
            violations,
            f"config.{step}.strategy",
            admin_service_pb2.Strategy.DESCRIPTOR,
            getattr(message, step).strategy,
        )
    check_enum(
        violations,
        "config.danger_zone_policy",
        admin_service_pb2.DangerZonePolicy.DESCRIPTOR,
        message.danger_zone_policy,
    )
    priced: set[str] = set()
    for index, price in enumerate(message.prices):
        if price.backend in priced:
            violations.append(
                field_violation(f"config.prices[{index}].backend", f"{price.backend} is priced twice", "DUPLICATE")
            )
        priced.add(price.backend)
    try:
        config = RuntimeConfig.model_validate(config_values(message) | {"default_rate_limits": rate_limits})
    except ValidationError as error:
        violations += [
            field_violation("config." + ".".join(str(part) for part in e["loc"]), e["msg"], "INVALID_VALUE")
            for e in error.errors(include_input=False, include_url=False)
        ]
        raise InvalidArgument(violations) from None
    providers = ", ".join(sorted(backends.providers))
    for problem in problems(config, backends.knows):
        description = problem.description
        if problem.reason == "INVALID_BACKEND":
            description += f" ({providers})"
        violations.append(field_violation(f"config.{problem.field}", description, problem.reason))
    if violations:
        raise InvalidArgument(violations)
    return config


def _page_size_violations(page_size: int) -> list[error_details_pb2.BadRequest.FieldViolation]:
    if 0 <= page_size <= MAX_PAGE_SIZE:
        return []
    return [field_violation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}; got {page_size}", "OUT_OF_RANGE")]


def _make_token(last_id: str, scope: str) -> str:
    raw = f"{_TOKEN_VERSION}|{last_id}|{scope}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_token(token: str, scope: str) -> str | None:
    """The id to continue after, or None when the token is not ours or not for this listing."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    version, _, rest = raw.partition("|")
    last_id, _, token_scope = rest.partition("|")
    if version != _TOKEN_VERSION or not is_id(last_id) or token_scope != scope:
        return None
    return last_id
