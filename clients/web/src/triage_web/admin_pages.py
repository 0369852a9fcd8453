"""The admin console's pages: settings, usage and cost, audit log, API keys, backends.

Every call is made with the signed-in admin's own credential (admin_auth.admin_page).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triage.v1 import admin_service_pb2
from triage_client import Aborted, AsyncTriageClient, InvalidArgument, NotFound
from triage_client.client import audit_request
from triage_web import charts, config_form, labels
from triage_web.admin_auth import admin_form, admin_page
from triage_web.context import WebContext

MAX_KEY_PAGES = 20  # key names for the usage page: the first 20 pages (1,000 keys) at most
KEY_PAGE_SIZE = 50


def _violations(error: InvalidArgument) -> list[str]:
    return [f"{v.field}: {v.description}" for v in error.field_violations] or [error.message]


# Settings


async def _settings_page(
    request: Request,
    context: WebContext,
    client: AsyncTriageClient,
    *,
    values: config_form.SettingsForm | None = None,
    config: admin_service_pb2.Config | None = None,
    notice: str = "",
    errors: Sequence[str] = (),
    status_code: int = 200,
) -> Response:
    if config is None:
        config = (await client.get_config()).config
    backends = [b.name for b in (await client.list_backends()).backends]
    values = values or config_form.from_config(config)
    options = {
        step: [b for b in dict.fromkeys([*backends, values.backends[step]]) if step != "narrative" or b != "learned"]
        for step in config_form.STEP_NAMES
    }
    page = {
        "config": config,
        "values": values,
        "options": options,
        "notice": notice,
        "errors": errors,
    }
    return context.render(request, "admin/settings.html", page, status_code=status_code)


@admin_page
async def settings_page(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
    return await _settings_page(request, context, client)


def _stale(current: admin_service_pb2.Config) -> str:
    by = f" by {current.updated_by}" if current.updated_by else ""
    return (
        f"Someone else changed the settings since this form was opened (now version {current.version}, "
        f"changed{by} at {labels.when(current.updated_at)}). Your changes were not saved: "
        "the form shows the current settings; apply your change again."
    )


@admin_form
async def update_settings(request: Request, context: WebContext, client: AsyncTriageClient, form: FormData) -> Response:
    values = config_form.from_form(form)
    current = (await client.get_config()).config
    if values.version != current.version:
        return await _settings_page(request, context, client, config=current, errors=[_stale(current)], status_code=409)
    wanted = config_form.to_config(values)
    if values.errors:
        message = "Some values are not valid; see the fields marked below."
        return await _settings_page(request, context, client, values=values, errors=[message], status_code=400)
    paths = config_form.changed_paths(current, wanted)
    if not paths:
        return await _settings_page(request, context, client, config=current, notice="Nothing changed.")
    config_form.only_changed_limits(current, wanted)
    update = admin_service_pb2.UpdateConfigRequest(config=wanted, expected_version=values.version)
    update.update_mask.paths.extend(paths)
    try:
        updated = (await client.update_config(update)).config
    except Aborted:
        current = (await client.get_config()).config
        return await _settings_page(request, context, client, config=current, errors=[_stale(current)], status_code=409)
    except InvalidArgument as error:
        general = []
        for violation in error.field_violations:
            name = config_form.input_of(violation.field, wanted)
            if name is None:
                general.append(f"{violation.field}: {violation.description}")
            else:
                values.errors[name] = violation.description
        errors = ["The settings were not saved; see the fields marked below.", *general]
        return await _settings_page(request, context, client, values=values, errors=errors, status_code=400)
    notice = f"Saved as version {updated.version}: {', '.join(paths)}."
    return await _settings_page(request, context, client, config=updated, notice=notice)


# Usage and cost


@dataclass
class Total:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd_micros: int = 0

    def add(self, record: admin_service_pb2.UsageRecord) -> None:
        self.requests += record.requests
        self.input_tokens += record.cost.input_tokens
        self.output_tokens += record.cost.output_tokens
        self.usd_micros += record.cost.usd_micros


def _totals(records: Iterable[admin_service_pb2.UsageRecord], key: Any) -> dict[str, Total]:
    totals: dict[str, Total] = defaultdict(Total)
    for record in records:
        totals[key(record)].add(record)
    return dict(sorted(totals.items()))


def _date(text: str | None, default: date) -> date | None:
    if not text:
        return default
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    # The range ends the day after its last: the last day must have one.
    return day if day < date.max else None


async def _key_names(client: AsyncTriageClient) -> dict[str, str]:
    """Names for the usage tables' key ids, of the first MAX_KEY_PAGES pages of keys (an id stands in for the rest)."""
    names: dict[str, str] = {}
    async with aclosing(client.iter_api_keys(page_size=KEY_PAGE_SIZE)) as keys:
        async for key in keys:
            names[key.key_id] = key.name
            if len(names) >= MAX_KEY_PAGES * KEY_PAGE_SIZE:
                break
    return names


@admin_page
async def usage_page(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
    today = datetime.now(UTC).date()
    start = _date(request.query_params.get("start"), today.replace(day=1))
    end = _date(request.query_params.get("end"), today)
    key_id = request.query_params.get("key", "").strip()
    page: dict[str, Any] = {"start": request.query_params.get("start") or str(start), "key_id": key_id}
    page["end"] = request.query_params.get("end") or str(end)
    if start is None or end is None:
        page["error"] = "Give the dates as YYYY-MM-DD."
        return context.render(request, "admin/usage.html", page | {"usage": None}, status_code=400)
    usage_request = admin_service_pb2.GetUsageRequest(key_id=key_id)
    usage_request.start_time.FromDatetime(datetime.combine(start, datetime.min.time(), UTC))
    usage_request.end_time.FromDatetime(datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC))
    try:
        usage = await client.get_usage(usage_request)
    except InvalidArgument as error:
        page["error"] = "; ".join(_violations(error))
        return context.render(request, "admin/usage.html", page | {"usage": None}, status_code=400)
    names = await _key_names(client)
    records = list(usage.usage)

    def key_label(key: str) -> str:
        return f"{names[key]} ({key})" if key in names else key or "no key"

    by_day = _totals(records, lambda r: labels.day(r.day_start))
    by_step = _totals(records, lambda r: labels.STEPS.get(r.step, str(r.step)))
    by_backend = _totals(records, lambda r: r.backend)
    by_key = _totals(records, lambda r: key_label(r.key_id))
    total = Total()
    for record in records:
        total.add(record)
    budgets = [
        {
            "label": "Global monthly budget" if not b.key_id else f"Budget of {key_label(b.key_id)}",
            "budget": b,
            "chart": charts.bar_chart(
                f"budget-{b.key_id or 'global'}",
                f"Spent this month against the {'global' if not b.key_id else 'key'} budget",
                [("Spent", b.spent_usd_micros)],
                lambda v: f"{labels.usd(int(v))} USD",
                limit=b.limit_usd_micros,
            ),
        }
        for b in usage.budgets
    ]
    day_chart = charts.bar_chart(
        "cost-by-day", "Cost by day", [(d, t.usd_micros) for d, t in by_day.items()], lambda v: labels.usd(int(v))
    )
    requests_chart = charts.bar_chart(
        "requests-by-day", "Requests by day", [(d, t.requests) for d, t in by_day.items()], lambda v: f"{int(v):,}"
    )
    backend_chart = charts.bar_chart(
        "cost-by-backend",
        "Cost by backend",
        [(b, t.usd_micros) for b, t in by_backend.items()],
        lambda v: labels.usd(int(v)),
    )
    page |= {
        "usage": usage,
        "total": total,
        "tables": [("Day", by_day), ("Step", by_step), ("Backend", by_backend), ("Key", by_key)],
        "budgets": budgets,
        "charts": [day_chart, requests_chart, backend_chart],
        "key_names": names,
    }
    return context.render(request, "admin/usage.html", page)


# Audit log


def _moment(text: str) -> datetime | None:
    """A datetime-local value (YYYY-MM-DDTHH:MM, UTC); None when it is none."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # The form's datetime-local values have no zone and mean UTC; a time given with its offset keeps it.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@admin_page
async def audit_page(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
    query = request.query_params
    page: dict[str, Any] = {"start": query.get("start", ""), "end": query.get("end", ""), "events": []}
    page |= {"page_size": query.get("page_size", "50"), "next_token": "", "first": not query.get("page_token")}
    bounds = {name: _moment(query[name]) if query.get(name) else None for name in ("start", "end")}
    bad = [name for name in ("start", "end") if query.get(name) and bounds[name] is None]
    size = int(page["page_size"]) if page["page_size"].isdecimal() else -1
    if bad or not 1 <= size <= 1000:
        page["error"] = "Give the range as date and time (UTC), and a page size from 1 to 1,000."
        return context.render(request, "admin/audit.html", page, status_code=400)
    audit = audit_request(
        page_size=size, page_token=query.get("page_token", ""), start_time=bounds["start"], end_time=bounds["end"]
    )
    try:
        response = await client.list_audit_events(audit)
    except InvalidArgument as error:
        page["error"] = "; ".join(_violations(error))
        return context.render(request, "admin/audit.html", page, status_code=400)
    page |= {"events": list(response.audit_events), "next_token": response.next_page_token}
    return context.render(request, "admin/audit.html", page)


# API keys

KEY_FIELDS = {
    "name": "name",
    "role": "role",
    "rate_limit": "rate_limit",
    "expires_in": "expires_in_days",
    "monthly_budget_usd_micros": "monthly_budget_usd",
}


async def _keys_page(
    request: Request,
    context: WebContext,
    client: AsyncTriageClient,
    *,
    status_code: int = 200,
    **values: Any,
) -> Response:
    token = request.query_params.get("page_token", "")
    try:
        listing = await client.list_api_keys(admin_service_pb2.ListApiKeysRequest(page_size=50, page_token=token))
    except InvalidArgument:
        listing = await client.list_api_keys(admin_service_pb2.ListApiKeysRequest(page_size=50))
    page: dict[str, Any] = {"keys": list(listing.api_keys), "next_token": listing.next_page_token, "created": None}
    page |= {"field_errors": {}, "submitted": {}, "roles": labels.ROLES}
    return context.render(request, "admin/keys.html", page | values, status_code=status_code)


@admin_page
async def keys_page(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
    return await _keys_page(request, context, client)


@admin_form
async def create_key(request: Request, context: WebContext, client: AsyncTriageClient, form: FormData) -> Response:
    submitted = {name: str(form.get(name, "")).strip() for name in (*KEY_FIELDS.values(), "refuse_over_budget")}
    errors: dict[str, str] = {}
    roles = {name: value for value, name in labels.ROLES.items()}
    create = admin_service_pb2.CreateApiKeyRequest(
        name=submitted["name"],
        role=roles.get(submitted["role"], admin_service_pb2.ROLE_UNSPECIFIED),
        rate_limit=submitted["rate_limit"],
        refuse_over_budget=bool(submitted["refuse_over_budget"]),
    )
    if submitted["expires_in_days"]:
        if submitted["expires_in_days"].isdecimal() and 0 < int(submitted["expires_in_days"]) <= 36_525:
            create.expires_in.CopyFrom(duration_pb2.Duration(seconds=int(submitted["expires_in_days"]) * 86_400))
        else:
            errors["expires_in_days"] = "must be a whole number of days, 1 to 36,525"
    if submitted["monthly_budget_usd"]:
        micros = labels.micros_of(submitted["monthly_budget_usd"])
        if micros is None:
            errors["monthly_budget_usd"] = "must be an amount in US dollars, 0 or more"
        else:
            create.monthly_budget_usd_micros = micros
    if not errors:
        try:
            created = await client.create_api_key(create)
        except InvalidArgument as error:
            for violation in error.field_violations:
                errors[KEY_FIELDS.get(violation.field.partition(".")[0], "name")] = violation.description
        else:
            notice = f"Created the key {created.api_key.name} ({created.api_key.key_id})."
            return await _keys_page(request, context, client, created=created, notice=notice)
    return await _keys_page(
        request,
        context,
        client,
        status_code=400,
        field_errors=errors,
        submitted=submitted,
        error="The key was not created; see the fields marked below.",
    )


@admin_form
async def revoke_key(request: Request, context: WebContext, client: AsyncTriageClient, form: FormData) -> Response:
    key_id = request.path_params["key_id"]
    try:
        revoked = (await client.revoke_api_key(admin_service_pb2.RevokeApiKeyRequest(key_id=key_id))).api_key
    except (InvalidArgument, NotFound):
        return await _keys_page(request, context, client, status_code=404, error=f"There is no key {key_id}.")
    notice = f"Revoked the key {revoked.name} ({revoked.key_id}) at {labels.when(revoked.revoked_at)}."
    return await _keys_page(request, context, client, notice=notice)


# Backends


@admin_page
async def backends_page(request: Request, context: WebContext, client: AsyncTriageClient) -> Response:
    backends = list((await client.list_backends()).backends)
    return context.render(request, "admin/backends.html", {"backends": backends})


routes = [
    Route("/admin/settings", settings_page, methods=["GET"]),
    Route("/admin/settings", update_settings, methods=["POST"]),
    Route("/admin/usage", usage_page, methods=["GET"]),
    Route("/admin/audit", audit_page, methods=["GET"]),
    Route("/admin/keys", keys_page, methods=["GET"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/backends", backends_page, methods=["GET"]),
]
