"""The configuration an administrator changes at run time, versioned in the database.

Routing of model steps, strategies, prices, the danger-zone policy, budgets and
default rate limits live here rather than in environment variables, because
they change without a restart. Every change is a new row (version, the whole
configuration, who, when, which fields), so the table is the history. Each
server process polls the latest version twice a second and applies a change
within a second; the process that made a change applies it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from server.domain import LEARNED, RULES, Role
from server.domain import DangerZonePolicy as RulesDangerZonePolicy
from server.errors import Aborted
from server.refresh import Refresher
from server.store.models import ConfigVersionRecord

__all__ = ["LEARNED", "RULES", "ConfigStore", "RuntimeConfig", "RuntimeConfigs", "StepPolicy", "Strategy"]

log = logging.getLogger("triage.config")

Strategy = Literal["rules", "model", "most_urgent"]
# D's policy: the rules' two, or "learned": up-triage when the estimated risk is high enough.
DangerZonePolicy = RulesDangerZonePolicy | Literal["learned"]
POLL_INTERVAL_SECONDS = 0.5

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

    input_usd_micros_per_million_tokens: int = Field(ge=0)
    output_usd_micros_per_million_tokens: int = Field(ge=0)

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
    global_monthly_budget_usd_micros: int = Field(default=20_000_000, ge=0)
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

    def latest(self) -> RuntimeConfig | None:
        with Session(self._engine) as session:
            query = select(ConfigVersionRecord).order_by(ConfigVersionRecord.version.desc()).limit(1)  # type: ignore[attr-defined]
            record = session.exec(query).first()
        return None if record is None else RuntimeConfig.model_validate_json(record.config_json)

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

    def __init__(self, store: ConfigStore, defaults: RuntimeConfig) -> None:
        self._store = store
        self.current = defaults
        self._refresher = Refresher(self._refresh, interval_seconds=POLL_INTERVAL_SECONDS, what="the configuration")

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def update(
        self, config: RuntimeConfig, *, expected_version: int, changed_paths: list[str], by: str
    ) -> RuntimeConfig:
        """Stores `config` as the next version after `expected_version`; Aborted when it is stale."""
        latest = await asyncio.to_thread(self._store.latest_version)
        if latest != expected_version:
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
        if await asyncio.to_thread(self._store.latest_version) != self.current.version:
            latest = await asyncio.to_thread(self._store.latest)
            if latest is not None:
                self._apply(latest)

    def _apply(self, config: RuntimeConfig) -> None:
        if config.version > self.current.version:
            self.current = config
