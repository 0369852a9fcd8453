"""`triage-server`: serve, manage API keys, or evaluate the rules engine on labelled data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from server.calls import Role
from server.config import Settings
from server.identity.api_keys import issue_key, key_violations
from server.logs import configure_logging
from server.secret import load_server_secret
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from server.store.models import ApiKeyRecord
from triage_client.cli import duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triage-server", description="The ED triage gRPC service.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve gRPC on TRIAGE_HOST:TRIAGE_PORT until SIGTERM or SIGINT")
    evaluate = commands.add_parser(
        "evaluate", help="compare the rules engine with nurse ESI levels in a MIMIC-IV-ED style CSV"
    )
    evaluate.add_argument("csv", type=Path, help="path to triage_with_age.csv")
    evaluate.add_argument("--output", choices=("text", "json"), default="text")
    evaluate.add_argument("--danger-zone-policy", choices=("up_triage", "flag_only"), default="up_triage")
    keys = commands.add_parser(
        "keys", help="manage API keys directly in TRIAGE_DATABASE_URL (bootstrap; or use `triage admin keys`)"
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; its secret is printed once, on the last line")
    create.add_argument("--name", required=True, help="who or what uses the key, such as 'epic-prod'")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--rate-limit", default="", help="its own limit, such as 10/second;1000/hour")
    create.add_argument("--expires-in", type=duration, default=None, help="lifetime such as 90d, 12h or 30m")
    create.add_argument("--monthly-budget-usd", type=float, default=0.0, help="its own monthly model budget")
    key_commands.add_parser("list", help="list keys (never their secrets)")
    revoke = key_commands.add_parser("revoke", help="revoke a key; every server stops accepting it within seconds")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    if args.command == "keys":
        return manage_keys(args)

    if args.command == "serve":
        settings = Settings()
        configure_logging(settings.log_level)
        unknown = Settings.unknown_variables()
        if unknown:
            logging.getLogger("triage.config").warning(
                "ignoring unknown TRIAGE_* variables", extra={"fields": {"variables": unknown}}
            )
        from server.workers import run

        return run(settings)
    from server.evaluation import evaluate_csv

    result = evaluate_csv(args.csv, args.danger_zone_policy)
    print(json.dumps(result.as_dict(), indent=2) if args.output == "json" else result.report())
    return 0


def manage_keys(args: argparse.Namespace) -> int:
    """`triage-server keys ...`: works on the database, so it needs no running server and no key."""
    settings = Settings()
    store = ApiKeyStore(open_database(settings.database_url))
    if args.keys_command == "create":
        role = Role(args.role)
        budget = round(args.monthly_budget_usd * 1_000_000)
        violations = key_violations(args.name, role, args.rate_limit, args.expires_in, budget)
        if violations:
            for violation in violations:
                print(f"{violation.field}: {violation.description}", file=sys.stderr)
            return 2
        issued = issue_key(
            store,
            load_server_secret(settings),
            name=args.name,
            role=role,
            rate_limit=args.rate_limit,
            expires_in=args.expires_in,
            monthly_budget_usd_micros=budget,
        )
        print(f"created {describe_key(issued.record)}")
        print("the secret follows; store it now, it is not shown again:")
        print(issued.secret)
        return 0
    if args.keys_command == "list":
        for record in store.all():
            print(describe_key(record))
        return 0
    revoked = store.revoke(args.key_id, datetime.now(UTC))
    if revoked is None:
        print(f"no API key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {describe_key(revoked)}")
    return 0


def describe_key(record: ApiKeyRecord) -> str:
    parts = [record.key_id, f"name={record.name}", f"role={record.role}"]
    parts.append(f"rate_limit={record.rate_limit or 'role default'}")
    parts.append(f"created={record.created_at:%Y-%m-%dT%H:%M:%SZ}")
    if record.expires_at is not None:
        parts.append(f"expires={record.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    if record.revoked_at is not None:
        parts.append(f"revoked={record.revoked_at:%Y-%m-%dT%H:%M:%SZ}")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
