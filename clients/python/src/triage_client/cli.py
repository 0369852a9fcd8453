"""`triage`: classify and explain cases, check health, read the audit log.

    triage classify --age 67 --sex male --complaint "chest pain" --hr 110
    triage explain --json case.json          # proto JSON of a TriageCase; - for stdin
    triage health
    triage admin audit --since 2026-11-01T00:00:00Z

Readable output by default, `--output json` for machines. Exit status: 0 on
success, 1 when the call fails (or health is not SERVING), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from triage.v1 import admin_service_pb2, case_pb2, classification_pb2, explain_service_pb2
from triage_client.client import ServingStatus, TriageClient, tls_credentials
from triage_client.errors import InvalidArgument, TriageError

_AGE = re.compile(r"^(\d+)\s*(y|yr|yrs|years?|m|mo|mos|months?|d|days?)?$", re.IGNORECASE)
_STEP_LETTER = {
    classification_pb2.STEP_LIFE_SAVING: "A",
    classification_pb2.STEP_HIGH_RISK: "B",
    classification_pb2.STEP_RESOURCES: "C",
    classification_pb2.STEP_DANGER_ZONE_VITALS: "D",
    classification_pb2.STEP_REVIEW: "E",
}
_LEVEL_MEANING = {
    1: "immediate life-saving intervention",
    2: "should not wait",
    3: "two or more resources",
    4: "one resource",
    5: "no resources",
}


def _enum_choices(enum: EnumDescriptor, prefix: str) -> dict[str, int]:
    return {v.name.removeprefix(prefix).lower().replace("_", "-"): v.number for v in enum.values if v.number != 0}


SEXES = _enum_choices(case_pb2.Sex.DESCRIPTOR, "SEX_")
AVPU = _enum_choices(case_pb2.Avpu.DESCRIPTOR, "AVPU_")
ARRIVALS = _enum_choices(case_pb2.ArrivalMode.DESCRIPTOR, "ARRIVAL_MODE_")
RISKS = _enum_choices(case_pb2.RiskFactor.DESCRIPTOR, "RISK_FACTOR_")


def parse_age(text: str) -> case_pb2.Age:
    """'67' or '67y' is years, '5m'/'5mo' months, '10d' days."""
    match = _AGE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"age {text!r}: use 67, 67y, 5mo or 10d")
    value, unit = int(match[1]), (match[2] or "y").lower()
    age = case_pb2.Age()
    if unit.startswith("d"):
        age.days = value
    elif unit.startswith("m"):
        age.months = value
    else:
        age.years = value
    return age


def _blood_pressure(text: str) -> tuple[float, float]:
    systolic, _, diastolic = text.partition("/")
    try:
        return float(systolic), float(diastolic)
    except ValueError:
        raise argparse.ArgumentTypeError(f"blood pressure {text!r}: use systolic/diastolic, e.g. 120/80") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triage", description="Client for the ED triage service.")
    parser.add_argument("--target", help="host:port of the server (default $TRIAGE_TARGET or 127.0.0.1:50051)")
    parser.add_argument("--api-key", help="API key (default $TRIAGE_API_KEY)")
    parser.add_argument("--timeout", type=float, help="deadline of the call in seconds")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="output format")
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument("--tls", action="store_true", help="use TLS, trusting the system's root certificates")
    tls.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA bundle")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS (with --tls-key)")
    tls.add_argument("--tls-key", metavar="PEM", help="client private key, for mutual TLS")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (
        ("classify", "suggest an ESI level for a case"),
        ("explain", "classify a case and print each step as it is decided"),
    ):
        command = commands.add_parser(name, help=help_text)
        _add_case_arguments(command)
        if name == "explain":
            command.add_argument("--classification-id", help="explain an earlier classification instead")

    health = commands.add_parser("health", help="check the server's health")
    health.add_argument("--service", default="", help="service name, e.g. triage.v1.ClassifyService")

    admin = commands.add_parser("admin", help="administration (admin role)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    audit = admin_commands.add_parser("audit", help="list audit events, oldest first")
    audit.add_argument("--since", type=datetime.fromisoformat, help="start time (ISO 8601, inclusive)")
    audit.add_argument("--until", type=datetime.fromisoformat, help="end time (ISO 8601, exclusive)")
    audit.add_argument("--limit", type=int, default=100, help="most events to print (0: all)")
    config = admin_commands.add_parser("config", help="read or change the runtime configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_commands.add_parser("get", help="print the configuration as key=value lines")
    config_set = config_commands.add_parser(
        "set",
        help="change settings: step.high_risk=openai:gpt-4o-mini strategy.high_risk=most_urgent "
        "danger_zone_policy=flag_only budget.global_monthly_usd=20 price.local:llama3=0,0 rate_limit.demo=20/day",
    )
    config_set.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    admin_commands.add_parser("backends", help="list step backends with their prices and circuit state")
    usage = admin_commands.add_parser("usage", help="model usage and cost by key, day, step and backend; budgets")
    usage.add_argument("--since", type=datetime.fromisoformat, help="start (ISO 8601); default: this month")
    usage.add_argument("--until", type=datetime.fromisoformat, help="end (ISO 8601, exclusive); default: now")
    usage.add_argument("--key", default="", help="one key's usage only")
    keys = admin_commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; its secret is printed once, on the last line")
    create.add_argument("--name", required=True, help="who or what uses the key, such as 'epic-prod'")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--rate-limit", default="", help="its own limit, such as 10/second;1000/hour")
    create.add_argument("--expires-in", type=duration, help="lifetime such as 90d, 12h or 30m")
    key_commands.add_parser("list", help="list keys (never their secrets)")
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    return parser


# Every role of the contract, by its lower-case name: demo, clinician, service, admin, gateway.
ROLES = tuple(
    name.removeprefix("ROLE_").lower() for name in admin_service_pb2.Role.keys() if name != "ROLE_UNSPECIFIED"
)


def duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s` as a timedelta; argparse reports anything else."""
    match = re.fullmatch(r"(\d+)([dhms])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90d, 12h, 30m or 45s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def _add_case_arguments(command: argparse.ArgumentParser) -> None:
    source = command.add_argument_group("the case, from a file")
    source.add_argument("--json", metavar="FILE", help="proto JSON of a TriageCase; - reads stdin")
    case = command.add_argument_group("the case, from options")
    case.add_argument("--age", type=parse_age, help="67 (years), 5mo (months) or 10d (days)")
    case.add_argument("--sex", choices=sorted(SEXES))
    case.add_argument("--complaint", help="chief complaint, as typed at triage")
    case.add_argument("--history", help="free-text triage note")
    case.add_argument("--hr", type=float, help="heart rate, beats/min")
    case.add_argument("--rr", type=float, help="respiratory rate, breaths/min")
    case.add_argument("--spo2", type=float, help="oxygen saturation, %%")
    case.add_argument("--bp", type=_blood_pressure, help="blood pressure, systolic/diastolic mmHg")
    case.add_argument("--temp", type=float, help="temperature, degrees Celsius")
    case.add_argument("--pain", type=int, help="pain score 0-10")
    case.add_argument("--gcs", type=int, help="Glasgow Coma Scale 3-15")
    case.add_argument("--avpu", choices=sorted(AVPU))
    case.add_argument("--ams", action="store_true", help="acute mental status change")
    case.add_argument("--arrival", choices=sorted(ARRIVALS))
    case.add_argument("--risk", action="append", choices=sorted(RISKS), default=[], help="repeatable")
    case.add_argument("--case-ref", default="", help="your correlation id (never a patient identifier)")


def case_from_args(args: argparse.Namespace, stdin: TextIO) -> case_pb2.TriageCase:
    if args.json:
        text = stdin.read() if args.json == "-" else Path(args.json).read_text(encoding="utf-8")
        return json_format.Parse(text, case_pb2.TriageCase())
    case = case_pb2.TriageCase(chief_complaint=args.complaint or "", history=args.history or "", case_ref=args.case_ref)
    if args.age is not None:
        case.age.CopyFrom(args.age)
    if args.sex:
        case.sex = case_pb2.Sex.ValueType(SEXES[args.sex])
    if args.avpu:
        case.avpu = case_pb2.Avpu.ValueType(AVPU[args.avpu])
    if args.arrival:
        case.arrival_mode = case_pb2.ArrivalMode.ValueType(ARRIVALS[args.arrival])
    case.acute_mental_status_change = args.ams
    case.risk_factors.extend(case_pb2.RiskFactor.ValueType(RISKS[r]) for r in args.risk)
    vitals = case.vitals
    for option, field in (
        ("hr", "heart_rate_bpm"),
        ("rr", "respiratory_rate_per_min"),
        ("spo2", "spo2_percent"),
        ("temp", "temperature_c"),
        ("pain", "pain_score"),
        ("gcs", "gcs"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(vitals, field, value)
    if args.bp is not None:
        vitals.systolic_bp_mmhg, vitals.diastolic_bp_mmhg = args.bp
    return case


def format_classification(c: classification_pb2.Classification) -> str:
    level = c.esi_level
    lines = [
        f"ESI {level}  {_LEVEL_MEANING.get(level, '')}   confidence {c.confidence:.2f}   "
        f"decided at {_STEP_LETTER.get(c.decided_at, '?')} "
        f"({classification_pb2.Step.Name(c.decided_at).removeprefix('STEP_').lower().replace('_', ' ')})",
    ]
    if c.findings:
        lines.append("findings:")
        lines += [f"  {_STEP_LETTER.get(f.step, '?')}  {f.text}  [{f.input_field}]" for f in c.findings]
    if c.predicted_resources:
        lines.append(f"predicted resources ({c.resource_count}):")
        for r in c.predicted_resources:
            kind = classification_pb2.ResourceKind.Name(r.kind).removeprefix("RESOURCE_KIND_").lower()
            lines.append(f"  {kind:<24} {r.detail}: {r.reason}")
    if c.warnings:
        lines.append("warnings:")
        lines += [f"  {w.text}" for w in c.warnings]
    lines.append(f"rationale: {c.rationale}")
    lines.append(
        f"classification {c.classification_id}  ruleset {c.pipeline.ruleset_version}  {c.classified_at.ToJsonString()}"
    )
    return "\n".join(lines)


def format_step(step: explain_service_pb2.StepEvent) -> str:
    elapsed_ms = step.elapsed.ToNanoseconds() / 1e6
    lines = [
        f"{_STEP_LETTER.get(step.step, '?')}  {step.question}",
        f"   -> {step.answer}   ({step.backend}, {elapsed_ms:.2f} ms)",
    ]
    lines += [f"      - {e.text}" for e in step.evidence]
    return "\n".join(lines)


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def main(argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = args.output == "json"
    try:
        credentials = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        with TriageClient(args.target, api_key=args.api_key, credentials=credentials) as client:
            if args.command in ("classify", "explain"):
                return _classify_or_explain(client, args, stdin, stdout, parser, as_json)
            if args.command == "health":
                status = client.health(args.service, timeout=args.timeout)
                name = ServingStatus.Name(status)
                print(json.dumps({"status": name}) if as_json else name, file=stdout)
                return 0 if status == ServingStatus.Value("SERVING") else 1
            if args.admin_command == "keys":
                return _manage_keys(client, args, stdout, as_json)
            if args.admin_command == "config":
                return _config(client, args, stdout, as_json, parser)
            if args.admin_command == "backends":
                for backend in client.list_backends(timeout=args.timeout).backends:
                    print(_json(backend) if as_json else _format_backend(backend), file=stdout)
                return 0
            if args.admin_command == "usage":
                return _usage(client, args, stdout, as_json)
            events = client.iter_audit_events(start_time=args.since, end_time=args.until)
            for shown, event in enumerate(events, start=1):
                print(_json(event) if as_json else _format_audit(event), file=stdout)
                if args.limit and shown >= args.limit:
                    break
            return 0
    except TriageError as error:
        _print_error(error)
        return 1
    except (OSError, ValueError, json_format.ParseError) as error:
        parser.exit(2, f"triage: error: {error}\n")


def _manage_keys(client: TriageClient, args: argparse.Namespace, stdout: TextIO, as_json: bool) -> int:
    if args.keys_command == "create":
        request = admin_service_pb2.CreateApiKeyRequest(
            name=args.name, role=admin_service_pb2.Role.Value(f"ROLE_{args.role.upper()}"), rate_limit=args.rate_limit
        )
        if args.expires_in is not None:
            request.expires_in.FromTimedelta(args.expires_in)
        created = client.create_api_key(request, timeout=args.timeout)
        if as_json:
            print(_json(created), file=stdout)
        else:
            print(f"created {_format_key(created.api_key)}", file=stdout)
            print("the secret follows; store it now, it is not shown again:", file=stdout)
            print(created.secret, file=stdout)
        return 0
    if args.keys_command == "list":
        for key in client.iter_api_keys(timeout=args.timeout):
            print(_json(key) if as_json else _format_key(key), file=stdout)
        return 0
    revoked = client.revoke_api_key(admin_service_pb2.RevokeApiKeyRequest(key_id=args.key_id), timeout=args.timeout)
    print(_json(revoked.api_key) if as_json else f"revoked {_format_key(revoked.api_key)}", file=stdout)
    return 0


_STEPS = ("high_risk", "resources", "narrative")


def _config(
    client: TriageClient, args: argparse.Namespace, stdout: TextIO, as_json: bool, parser: argparse.ArgumentParser
) -> int:
    current = client.get_config(timeout=args.timeout).config
    if args.config_command == "set":
        request = admin_service_pb2.UpdateConfigRequest(expected_version=current.version)
        request.config.CopyFrom(current)
        try:
            paths = [_assign(request.config, assignment) for assignment in args.assignments]
        except ValueError as error:
            parser.error(str(error))
        request.update_mask.paths.extend(dict.fromkeys(paths))
        current = client.update_config(request, timeout=args.timeout).config
        for step in ("high_risk", "resources"):
            policy = getattr(current, step)
            if policy.backend != "rules" and policy.strategy in (0, admin_service_pb2.STRATEGY_RULES):
                print(
                    f"note: strategy.{step}=rules, so {policy.backend} is not asked; "
                    f"set strategy.{step}=most_urgent (or model) to use it",
                    file=sys.stderr,
                )
    if as_json:
        print(_json(current), file=stdout)
        return 0
    for line in config_lines(current):
        print(line, file=stdout)
    return 0


def config_lines(config: admin_service_pb2.Config) -> list[str]:
    """The configuration in the KEY=VALUE vocabulary of `triage admin config set`."""
    lines = [f"version={config.version}"]
    if config.HasField("updated_at"):
        lines.append(f"updated={config.updated_at.ToJsonString()} by {config.updated_by}")
    for step in _STEPS:
        policy = getattr(config, step)
        lines.append(f"step.{step}={policy.backend}")
        lines.append(
            f"strategy.{step}={_enum_word(admin_service_pb2.Strategy.DESCRIPTOR, policy.strategy, 'STRATEGY_')}"
        )
    lines.append(
        "danger_zone_policy="
        + _enum_word(admin_service_pb2.DangerZonePolicy.DESCRIPTOR, config.danger_zone_policy, "DANGER_ZONE_POLICY_")
    )
    lines.append(f"budget.global_monthly_usd={config.global_monthly_budget_usd_micros / 1e6:g}")
    for price in config.prices:
        per_million = (
            price.input_usd_micros_per_million_tokens / 1e6,
            price.output_usd_micros_per_million_tokens / 1e6,
        )
        lines.append(f"price.{price.backend}={per_million[0]:g},{per_million[1]:g}")
    for limit in config.default_rate_limits:
        lines.append(
            f"rate_limit.{_enum_word(admin_service_pb2.Role.DESCRIPTOR, limit.role, 'ROLE_')}={limit.rate_limit}"
        )
    return lines


def _enum_word(enum: EnumDescriptor, value: int, prefix: str) -> str:
    return str(enum.values_by_number[value].name).removeprefix(prefix).lower()


def _assign(config: admin_service_pb2.Config, assignment: str) -> str:
    """Applies one KEY=VALUE to `config`; returns the field-mask path it changed."""
    key, equals, value = assignment.partition("=")
    group, _, name = key.partition(".")
    if not equals:
        raise ValueError(f"{assignment!r}: write KEY=VALUE")
    if group == "step" and name in _STEPS:
        getattr(config, name).backend = value
        return f"{name}.backend"
    if group == "strategy" and name in _STEPS:
        getattr(config, name).strategy = _enum_value(admin_service_pb2.Strategy.DESCRIPTOR, "STRATEGY_", value)
        return f"{name}.strategy"
    if key == "danger_zone_policy":
        config.danger_zone_policy = _enum_value(
            admin_service_pb2.DangerZonePolicy.DESCRIPTOR, "DANGER_ZONE_POLICY_", value
        )
        return key
    if key == "budget.global_monthly_usd":
        config.global_monthly_budget_usd_micros = round(_number(value, key) * 1_000_000)
        return "global_monthly_budget_usd_micros"
    if group == "price" and name:
        price_in, _, price_out = value.partition(",")
        kept = [p for p in config.prices if p.backend != name]
        del config.prices[:]
        config.prices.extend(kept)
        config.prices.add(
            backend=name,
            input_usd_micros_per_million_tokens=round(_number(price_in, key) * 1_000_000),
            output_usd_micros_per_million_tokens=round(_number(price_out, key) * 1_000_000),
        )
        return "prices"
    if group == "rate_limit" and name:
        role = _enum_value(admin_service_pb2.Role.DESCRIPTOR, "ROLE_", name)
        kept_limits = [limit for limit in config.default_rate_limits if limit.role != role]
        del config.default_rate_limits[:]
        config.default_rate_limits.extend(kept_limits)
        config.default_rate_limits.add(role=role, rate_limit=value)
        return "default_rate_limits"
    raise ValueError(
        f"{key!r} is not a setting: use step.<step>, strategy.<step> (steps: {', '.join(_STEPS)}), "
        "danger_zone_policy, budget.global_monthly_usd, price.<backend>, rate_limit.<role>"
    )


def _enum_value(enum: EnumDescriptor, prefix: str, word: str) -> Any:
    value = enum.values_by_name.get(prefix + word.upper())
    if value is None or value.number == 0:
        names = [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]
        raise ValueError(f"{word!r}: use one of {', '.join(names)}")
    return value.number


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not a number") from None


def _usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f} USD"


def _format_backend(backend: admin_service_pb2.Backend) -> str:
    price = backend.price
    circuit = _enum_word(admin_service_pb2.CircuitState.DESCRIPTOR, backend.circuit_state, "CIRCUIT_STATE_")
    return (
        f"{backend.name}  input {price.input_usd_micros_per_million_tokens / 1e6:g} "
        f"output {price.output_usd_micros_per_million_tokens / 1e6:g} USD per million tokens  circuit {circuit}"
    )


def _usage(client: TriageClient, args: argparse.Namespace, stdout: TextIO, as_json: bool) -> int:
    request = admin_service_pb2.GetUsageRequest(key_id=args.key)
    if args.since is not None:
        request.start_time.FromDatetime(args.since)
    if args.until is not None:
        request.end_time.FromDatetime(args.until)
    report = client.get_usage(request, timeout=args.timeout)
    if as_json:
        print(_json(report), file=stdout)
        return 0
    for row in report.usage:
        step = _enum_word(classification_pb2.Step.DESCRIPTOR, row.step, "STEP_")
        print(
            f"{row.day_start.ToDatetime():%Y-%m-%d}  {row.key_id or '-'}  {step}  {row.backend}  {row.requests} calls  "
            f"{row.cost.input_tokens}+{row.cost.output_tokens} tokens  {_usd(row.cost.usd_micros)}",
            file=stdout,
        )
    for budget in report.budgets:
        whose = f"key {budget.key_id}" if budget.key_id else "global"
        share = budget.spent_usd_micros / budget.limit_usd_micros if budget.limit_usd_micros else 0.0
        print(
            f"budget {whose}: {_usd(budget.spent_usd_micros)} of {_usd(budget.limit_usd_micros)} ({share:.0%}) "
            f"since {budget.month_start.ToDatetime():%Y-%m-%d}",
            file=stdout,
        )
    return 0


def _format_key(key: admin_service_pb2.ApiKey) -> str:
    parts = [key.key_id, f"name={key.name}", f"role={admin_service_pb2.Role.Name(key.role)[5:].lower()}"]
    parts.append(f"rate_limit={key.rate_limit or 'role default'}")
    parts.append(f"created={key.created_at.ToJsonString()}")
    if key.HasField("expires_at"):
        parts.append(f"expires={key.expires_at.ToJsonString()}")
    if key.HasField("revoked_at"):
        parts.append(f"revoked={key.revoked_at.ToJsonString()}")
    return " ".join(parts)


def _classify_or_explain(
    client: TriageClient,
    args: argparse.Namespace,
    stdin: TextIO,
    stdout: TextIO,
    parser: argparse.ArgumentParser,
    as_json: bool,
) -> int:
    if args.command == "explain" and args.classification_id:
        stream = client.explain(classification_id=args.classification_id, timeout=args.timeout)
    else:
        if not args.json and (args.age is None or not args.complaint):
            parser.error("give --age and --complaint, or --json FILE")
        case = case_from_args(args, stdin)
        if args.command == "classify":
            classification = client.classify(case, timeout=args.timeout)
            print(_json(classification) if as_json else format_classification(classification), file=stdout)
            return 0
        stream = client.explain(case, timeout=args.timeout)
    for event in stream:
        if as_json:
            print(_json(event), file=stdout, flush=True)
        elif event.HasField("step"):
            print(format_step(event.step), file=stdout, flush=True)
        elif event.HasField("narrative"):
            print(event.narrative.text, end="", file=stdout, flush=True)
        else:
            print("\n" + format_classification(event.classification), file=stdout, flush=True)
    return 0


def _format_audit(event: admin_service_pb2.AuditEvent) -> str:
    return (
        f"{event.recorded_at.ToJsonString()}  {event.classification_id}  ESI {event.esi_level}  "
        f"{','.join(event.finding_codes)}"
    )


def _print_error(error: TriageError) -> None:
    print(f"triage: {error}", file=sys.stderr)
    if isinstance(error, InvalidArgument):
        for violation in error.field_violations:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
    if error.retry_delay is not None:
        print(f"  retry after {error.retry_delay.total_seconds():g} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
