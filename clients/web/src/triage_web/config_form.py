"""The settings form: the runtime configuration as form values, and back to an UpdateConfig request.

The form shows every field; the update sends only those that differ from the current configuration,
with the version the form was made from, so that a stale form is refused by the server (ABORTED).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.datastructures import FormData

from triage.v1 import admin_service_pb2
from triage_web import labels

STEP_NAMES = tuple(labels.CONFIG_STEPS)
_STRATEGY_BY_NAME = {name: value for value, (name, _) in labels.STRATEGIES.items()}
_DANGER_BY_NAME = {name: value for value, (name, _) in labels.DANGER_ZONE.items()}
_ROLE_BY_NAME = {name: value for value, name in labels.ROLES.items()}


@dataclass
class PriceRow:
    backend: str
    input_usd: str
    output_usd: str
    remove: bool = False


@dataclass
class SettingsForm:
    """The settings as the form shows them (strings as typed), and the errors by input name."""

    version: int
    backends: dict[str, str]
    strategies: dict[str, str]
    danger_zone: str
    budget_usd: str
    prices: list[PriceRow]
    rate_limits: dict[str, str]
    new_price: PriceRow = field(default_factory=lambda: PriceRow("", "", ""))
    errors: dict[str, str] = field(default_factory=dict)


def from_config(config: admin_service_pb2.Config) -> SettingsForm:
    return SettingsForm(
        version=config.version,
        backends={step: getattr(config, step).backend or "rules" for step in STEP_NAMES},
        strategies={
            step: labels.STRATEGIES.get(getattr(config, step).strategy, ("rules", ""))[0] for step in STEP_NAMES
        },
        danger_zone=labels.DANGER_ZONE.get(config.danger_zone_policy, ("up_triage", ""))[0],
        budget_usd=labels.usd_input(config.global_monthly_budget_usd_micros),
        prices=[
            PriceRow(
                p.backend,
                labels.usd_input(p.input_usd_micros_per_million_tokens),
                labels.usd_input(p.output_usd_micros_per_million_tokens),
            )
            for p in config.prices
        ],
        rate_limits={labels.ROLES.get(r.role, str(r.role)): r.rate_limit for r in config.default_rate_limits},
    )


def from_form(form: FormData) -> SettingsForm:
    def text(name: str) -> str:
        return str(form.get(name, "")).strip()

    count = int(text("prices.count")) if text("prices.count").isdecimal() else 0
    try:
        version = int(text("expected_version"))
    except ValueError:
        version = -1
    return SettingsForm(
        version=version,
        backends={step: text(f"steps.{step}.backend") for step in STEP_NAMES},
        strategies={step: text(f"steps.{step}.strategy") for step in STEP_NAMES},
        danger_zone=text("danger_zone_policy"),
        budget_usd=text("global_monthly_budget_usd"),
        prices=[
            PriceRow(
                text(f"prices.{i}.backend"),
                text(f"prices.{i}.input_usd"),
                text(f"prices.{i}.output_usd"),
                remove=bool(form.get(f"prices.{i}.remove")),
            )
            for i in range(min(count, 1000))
        ],
        rate_limits={
            name.removeprefix("rate_limits."): str(value).strip()
            for name, value in form.multi_items()
            if name.startswith("rate_limits.") and name.removeprefix("rate_limits.") in _ROLE_BY_NAME
        },
        new_price=PriceRow(text("prices.new.backend"), text("prices.new.input_usd"), text("prices.new.output_usd")),
    )


def to_config(values: SettingsForm) -> admin_service_pb2.Config:
    """The Config the form asks for; fills values.errors with what cannot be one (nothing is sent then)."""
    config = admin_service_pb2.Config(version=values.version)
    errors = values.errors
    for step in STEP_NAMES:
        policy = getattr(config, step)
        policy.backend = values.backends[step]
        if values.strategies[step] not in _STRATEGY_BY_NAME:
            errors[f"steps.{step}.strategy"] = "choose a strategy"
        else:
            policy.strategy = _STRATEGY_BY_NAME[values.strategies[step]]
    if values.danger_zone not in _DANGER_BY_NAME:
        errors["danger_zone_policy"] = "choose a policy"
    else:
        config.danger_zone_policy = _DANGER_BY_NAME[values.danger_zone]
    budget = labels.micros_of(values.budget_usd)
    if budget is None:
        errors["global_monthly_budget_usd"] = "must be an amount in US dollars, 0 or more (up to 6 decimals)"
    else:
        config.global_monthly_budget_usd_micros = budget
    rows = [(f"prices.{i}", row) for i, row in enumerate(values.prices) if not row.remove]
    if values.new_price.backend or values.new_price.input_usd or values.new_price.output_usd:
        rows.append(("prices.new", values.new_price))
    for name, row in rows:
        prices = (labels.micros_of(row.input_usd), labels.micros_of(row.output_usd))
        if name == "prices.new" and not row.backend:
            errors["prices.new.backend"] = "name the backend, such as openai:gpt-4o-mini"
        for kind, micros in zip(("input_usd", "output_usd"), prices, strict=True):
            if micros is None:
                errors[f"{name}.{kind}"] = "must be an amount in US dollars per million tokens, 0 or more"
        if None not in prices:
            config.prices.add(
                backend=row.backend,
                input_usd_micros_per_million_tokens=prices[0] or 0,
                output_usd_micros_per_million_tokens=prices[1] or 0,
            )
    for role, limit in values.rate_limits.items():
        config.default_rate_limits.add(role=_ROLE_BY_NAME[role], rate_limit=limit)
    return config


def changed_paths(current: admin_service_pb2.Config, wanted: admin_service_pb2.Config) -> list[str]:
    """The update mask: the fields of `wanted` that differ from `current`."""
    paths = [
        f"{step}.{part}"
        for step in STEP_NAMES
        for part in ("backend", "strategy")
        if getattr(getattr(current, step), part) != getattr(getattr(wanted, step), part)
    ]
    for name in ("danger_zone_policy", "global_monthly_budget_usd_micros"):
        if getattr(current, name) != getattr(wanted, name):
            paths.append(name)
    if _prices(current) != _prices(wanted):
        paths.append("prices")
    if _limits(wanted).items() - _limits(current).items():
        paths.append("default_rate_limits")
    return paths


def only_changed_limits(current: admin_service_pb2.Config, wanted: admin_service_pb2.Config) -> None:
    """Keeps in `wanted` only the rate limits that change (the server merges them role by role)."""
    before = _limits(current)
    changed = [r for r in wanted.default_rate_limits if before.get(r.role) != r.rate_limit]
    del wanted.default_rate_limits[:]
    wanted.default_rate_limits.extend(changed)


def _prices(config: admin_service_pb2.Config) -> dict[str, tuple[int, int]]:
    return {
        p.backend: (p.input_usd_micros_per_million_tokens, p.output_usd_micros_per_million_tokens)
        for p in config.prices
    }


def _limits(config: admin_service_pb2.Config) -> dict[int, str]:
    return {r.role: r.rate_limit for r in config.default_rate_limits}


def input_of(path: str, sent: admin_service_pb2.Config) -> str | None:
    """The form input a violation of UpdateConfig names, or None (then it is shown above the form)."""
    path = path.removeprefix("config.")
    step, _, part = path.partition(".")
    if step in STEP_NAMES and part in ("backend", "strategy"):
        return f"steps.{step}.{part}"
    if path == "global_monthly_budget_usd_micros":
        return "global_monthly_budget_usd"
    if path == "danger_zone_policy":
        return path
    if path.startswith("default_rate_limits."):
        return f"rate_limits.{path.removeprefix('default_rate_limits.')}"
    if path.startswith("default_rate_limits["):
        index = path.removeprefix("default_rate_limits[").partition("]")[0]
        if index.isdecimal() and int(index) < len(sent.default_rate_limits):
            return f"rate_limits.{labels.ROLES.get(sent.default_rate_limits[int(index)].role, '')}"
    return None
