"""The configuration an administrator changes at run time, versioned in the database.

Routing of model steps, strategies, prices, the danger-zone policy, budgets and
default rate limits live here rather than in environment variables, because
they change without a restart. Every change is a new row (version, the whole
configuration, who, when, which fields), so the table is the history. Each
server process polls the latest version twice a second and applies a change
within a second; the process that made a change applies it at once.

A configuration is checked as a whole (`problems`) before it is stored and
again when it is read: one stored by an older version or edited by hand that
no longer holds is logged and skipped, and the newest one that holds is used,
so that no call fails because of configuration.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from server.domain import LEARNED, RULES, Role
from server.domain import DangerZonePolicy as RulesDangerZonePolicy
from server.errors import Aborted
from server.rate_limits import parse_limits, rate_limit_problem
from server.refresh import Refresher
from server.store.models import ConfigVersionRecord

__all__ = [
    "LEARNED",
    "RULES",
    "ConfigStore",
    "Problem",
    "RuntimeConfig",
    "RuntimeConfigs",
    "StepPolicy",
    "Strategy",
    "problems",
]

log = logging.getLogger("triage.config")

Strategy = Literal["rules", "model", "most_urgent"]
# D's policy: the rules' two, or "learned": up-triage when the estimated risk is high enough.
DangerZonePolicy = RulesDangerZonePolicy | Literal["learned"]
POLL_INTERVAL_SECONDS = 0.5
# Roles added since a version could have been stored without them: such a version takes the settings' default
# for them instead of being skipped as incomplete (a role missing for any other reason still makes it not hold).
ROLES_ADDED_LATER = (Role.GATEWAY,)
# The largest value of an int64 message field: what GetConfig and GetUsage can carry.
_INT64_MAX = 2**63 - 1
# 1,000,000 USD per million tokens, far above any price list, keeps every call's cost well within int64.
MAX_PRICE_USD_MICROS_PER_MILLION_TOKENS = 10**12

# USD per million tokens (input, output), from the providers' published price lists
# (November 2026); override with UpdateConfig. Local models (vLLM, Ollama,
# llama.cpp) cost nothing per token: price them at 0.
DEFAULT_PRICES_USD_PER_MILLION: Mapping[str, tuple[float, float]] = {
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4.1": (2.00, 8.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
    "openai:gpt-4.1-nano": (0.10, 0.40),
    "openai:o4-mini": (1.10, 4.40),
}


class StepPolicy(BaseModel):
    """Which backend answers a step, and how its answer meets the rules'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = RULES
    strategy: Strategy = "rules"


class Price(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input_usd_micros_per_million_tokens: int = Field(ge=0, le=MAX_PRICE_USD_MICROS_PER_MILLION_TOKENS)
    output_usd_micros_per_million_tokens: int = Field(ge=0, le=MAX_PRICE_USD_MICROS_PER_MILLION_TOKENS)

    def cost_usd_micros(self, input_tokens: int, output_tokens: int) -> int:
        """The cost of a call, rounded up to the micro-dollar: never under-counted."""
        total = input_tokens * self.input_usd_micros_per_million_tokens
        total += output_tokens * self.output_usd_micros_per_million_tokens
        return -(-total // 1_000_000)


class RuntimeConfig(BaseModel):
    """One version of the runtime configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 0
    # B and C: the learned estimates, combined with the rules under `model`
    # (server/steps/high_risk.py, resources.py): what evaluates best on NHAMCS 2016-2018.
    # A StepPolicy field is named after its step (server/steps: config_field).
    high_risk: StepPolicy = StepPolicy(backend=LEARNED, strategy="model")
    resources: StepPolicy = StepPolicy(backend=LEARNED, strategy="model")
    narrative: StepPolicy = StepPolicy()
    danger_zone_policy: DangerZonePolicy = "learned"
    prices: dict[str, Price] = Field(default_factory=dict)
    global_monthly_budget_usd_micros: int = Field(default=20_000_000, ge=0, le=_INT64_MAX)
    default_rate_limits: dict[Role, str] = Field(default_factory=dict)
    updated_at: datetime | None = None
    updated_by: str = ""

    def price(self, backend: str) -> Price | None:
        return self.prices.get(backend)

    @field_validator("narrative")
    @classmethod
    def _learned_answers_b_and_c_only(cls, narrative: StepPolicy) -> StepPolicy:
        if narrative.backend == LEARNED:
            raise ValueError("the learned estimates cannot write a narrative")
        return narrative


class Problem(NamedTuple):
    """Why a configuration would break calls: the field (a path in Config), what is wrong, a machine reason."""

    field: str
    description: str
    reason: str


_BACKEND = re.compile(r"^(rules|[a-z][a-z0-9_-]*:[A-Za-z0-9._:/-]+)$")
# The configuration's step policies (a StepPolicy field is named after its step), in Config's order.
STEP_FIELDS = tuple(name for name, field in RuntimeConfig.model_fields.items() if field.annotation is StepPolicy)


def problems(config: RuntimeConfig, known_backend: Callable[[str], bool] | None = None) -> list[Problem]:
    """Every reason `config` would break a call; empty when it holds.

    `known_backend` says whether a provider:model backend has a configured
    provider (the settings' providers); without it backends are checked for form only.
    """
    found = []
    for step in STEP_FIELDS:
        policy: StepPolicy = getattr(config, step)
        if policy.backend == LEARNED:
            continue  # free and offline; RuntimeConfig keeps it to B and C
        if not _BACKEND.match(policy.backend) or (known_backend is not None and not known_backend(policy.backend)):
            found.append(
                Problem(
                    f"{step}.backend",
                    "must be rules, learned (high_risk, resources) or provider:model, with a configured provider",
                    "INVALID_BACKEND",
                )
            )
        elif policy.backend != RULES and config.price(policy.backend) is None:
            found.append(
                Problem(
                    f"{step}.backend",
                    f"{policy.backend} has no price; set one in prices first (0 for a free local model)",
                    "NO_PRICE",
                )
            )
        if policy.strategy != "rules" and policy.backend == RULES:
            found.append(Problem(f"{step}.strategy", f"{policy.strategy} needs a model backend", "NEEDS_MODEL_BACKEND"))
    for role in Role:
        limit = config.default_rate_limits.get(role)
        if limit is None:
            # Every key without a limit of its own is counted against its role's.
            found.append(Problem(f"default_rate_limits.{role.value}", "every role needs a default limit", "REQUIRED"))
            continue
        problem = rate_limit_problem(limit)
        if problem is None and role is Role.ADMIN and any(item.amount == 0 for item in parse_limits(limit)):
            problem = "must allow at least one call: admin keys without their own limit would be locked out"
        if problem is not None:
            found.append(Problem(f"default_rate_limits.{role.value}", problem, "INVALID_RATE_LIMIT"))
    return found


# The rules alone at every step: ESI as written, no estimate and no model asked.
RULES_ONLY = RuntimeConfig(high_risk=StepPolicy(), resources=StepPolicy(), danger_zone_policy="up_triage")


def default_config(
    *, danger_zone_policy: DangerZonePolicy, rate_limits: Mapping[Role, str], global_monthly_budget_usd_micros: int
) -> RuntimeConfig:
    """Version 0: what a server runs before anyone changes anything, from its settings."""
    return RuntimeConfig(
        danger_zone_policy=danger_zone_policy,
        prices={
            name: Price(
                input_usd_micros_per_million_tokens=round(price_in * 1_000_000),
                output_usd_micros_per_million_tokens=round(price_out * 1_000_000),
            )
            for name, (price_in, price_out) in DEFAULT_PRICES_USD_PER_MILLION.items()
        },
        global_monthly_budget_usd_micros=global_monthly_budget_usd_micros,
        default_rate_limits=dict(rate_limits),
    )


class ConfigStore:
    """The config_versions table (synchronous; called from worker threads)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def latest_version(self) -> int:
        with Session(self._engine) as session:
            return int(session.exec(select(func.max(ConfigVersionRecord.version))).one() or 0)

    def newest_first(self, above: int, below: int, limit: int) -> list[tuple[int, str]]:
        """(version, stored JSON) of up to `limit` versions between `above` and `below` (exclusive), newest first."""
        with Session(self._engine) as session:
            query = (
                select(ConfigVersionRecord.version, ConfigVersionRecord.config_json)
                .where(ConfigVersionRecord.version > above, ConfigVersionRecord.version < below)
                .order_by(ConfigVersionRecord.version.desc())  # type: ignore[attr-defined]
                .limit(limit)
            )
            return [(int(version), text) for version, text in session.exec(query).all()]

    def save(self, config: RuntimeConfig, changed_paths: list[str]) -> None:
        """Stores `config` as its version; Aborted if that version exists (someone else won)."""
        assert config.updated_at is not None
        record = ConfigVersionRecord(
            version=config.version,
            config_json=config.model_dump_json(),
            updated_at=config.updated_at,
            updated_by=config.updated_by,
            changed_paths=" ".join(changed_paths),
        )
        try:
            with Session(self._engine) as session:
                session.add(record)
                session.commit()
        except IntegrityError:
            raise _conflict(config.version - 1) from None


def _conflict(expected: int) -> Aborted:
    return Aborted(
        f"the configuration changed since version {expected}; read it again (GetConfig) and reapply your change"
    )


class RuntimeConfigs:
    """This process's view of the runtime configuration: current, and kept current."""

    def __init__(
        self, store: ConfigStore, defaults: RuntimeConfig, known_backend: Callable[[str], bool] | None = None
    ) -> None:
        """`known_backend` (BackendRegistry.knows) lets a stored routing to a provider no longer configured be
        skipped at load; without it stored backends are checked for form only."""
        self._store = store
        self._known_backend = known_backend
        self._defaults = defaults
        self.current = defaults
        # The newest stored version looked at, and those that did not hold (each is logged once).
        self._examined = defaults.version
        self._invalid: set[int] = set()
        for problem in problems(defaults):
            log.error(
                "the configuration from the settings does not hold; fix the setting or change it with UpdateConfig",
                extra={"fields": {"field": problem.field, "problem": problem.description}},
            )
        self._refresher = Refresher(self._refresh, interval_seconds=POLL_INTERVAL_SECONDS, what="the configuration")

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def update(
        self, config: RuntimeConfig, *, expected_version: int, changed_paths: list[str], by: str
    ) -> RuntimeConfig:
        """Stores `config` as the next version after `expected_version`; Aborted when it is stale.

        Versions stored after the current one that do not hold are skipped: they were never in force,
        so a change based on the current version (what GetConfig shows) is not stale.
        """
        latest = await asyncio.to_thread(self._store.latest_version)
        skipped_only_invalid = expected_version == self.current.version and all(
            version in self._invalid for version in range(expected_version + 1, latest + 1)
        )
        if latest != expected_version and not skipped_only_invalid:
            raise _conflict(expected_version)
        new = config.model_copy(update={"version": latest + 1, "updated_at": datetime.now(UTC), "updated_by": by})
        await asyncio.to_thread(self._store.save, new, changed_paths)
        self._apply(new)
        log.info(
            "configuration changed",
            extra={"fields": {"version": new.version, "by": by, "paths": changed_paths}},
        )
        return new

    async def _refresh(self) -> None:
        latest = await asyncio.to_thread(self._store.latest_version)
        if latest == self._examined:
            return
        below = latest + 1
        while below > self.current.version + 1:
            stored = await asyncio.to_thread(self._store.newest_first, self.current.version, below, 20)
            if not stored:
                break
            held = next(
                (config for version, text in stored if (config := self._holding(version, text)) is not None), None
            )
            if held is not None:
                self._apply(held)
                break
            below = stored[-1][0]
        if latest != self.current.version:
            log.warning(
                "using an older configuration version than the newest stored",
                extra={"fields": {"version": self.current.version, "newest": latest}},
            )
        self._examined = latest

    def _holding(self, version: int, text: str) -> RuntimeConfig | None:
        """The stored version, or None (logged once) when it does not hold."""
        if version in self._invalid:
            return None
        found: list[Problem]
        config = None
        try:
            # The row's version is the version, whatever a hand edit left in the JSON.
            config = self._with_later_roles(
                RuntimeConfig.model_validate_json(text).model_copy(update={"version": version})
            )
            found = problems(config, self._known_backend)
        except ValidationError as error:
            # Locations and messages only: the stored values are not repeated in the log.
            found = [
                Problem(".".join(str(part) for part in e["loc"]), e["msg"], e["type"])
                for e in error.errors(include_input=False, include_url=False)
            ]
        if not found:
            return config
        self._invalid.add(version)
        log.error(
            "a stored configuration version does not hold and is skipped; the newest one that holds is used",
            extra={
                "fields": {
                    "version": version,
                    "problems": [f"{p.field}: {p.description}" for p in found],
                }
            },
        )
        return None

    def _with_later_roles(self, config: RuntimeConfig) -> RuntimeConfig:
        """`config` with the settings' limits for the roles it was stored before (ROLES_ADDED_LATER)."""
        stored = config.default_rate_limits
        added = {
            role: limit
            for role in ROLES_ADDED_LATER
            if role not in stored and (limit := self._defaults.default_rate_limits.get(role)) is not None
        }
        return config.model_copy(update={"default_rate_limits": stored | added}) if added else config

    def _apply(self, config: RuntimeConfig) -> None:
        if config.version > self.current.version:
            self.current = config
