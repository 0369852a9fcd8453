"""`triage-server`: serve, manage API keys, or evaluate the rules engine on labelled data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from server import key_rings
from server.calls import Role
from server.config import Settings
from server.identity.api_keys import issue_key, key_violations
from server.logs import configure_logging
from server.secret import KeyRingError, load_secret_ring
from server.store import backup, chain, retention, schema
from server.store.api_keys import ApiKeyStore
from server.store.backup import BackupError
from server.store.database import open_database
from server.store.models import ApiKeyRecord
from server.store.schema import SchemaNotCurrent
from triage_client.cli import duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triage-server", description="The ED triage gRPC service.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve gRPC on TRIAGE_HOST:TRIAGE_PORT until SIGTERM or SIGINT")
    migrate = commands.add_parser(
        "migrate",
        help="upgrade TRIAGE_DATABASE_URL's schema to this release's (take a backup first)",
        description="Upgrades the database schema to the one this release needs; the server refuses to start "
        "on an older one. Safe to run again, and from two places at once on PostgreSQL.",
    )
    migrate.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL instead of running it (for a DBA to review), from an empty database or --from",
    )
    migrate.add_argument("--from", dest="since", metavar="REVISION", help="with --sql: the database's revision now")
    audit = commands.add_parser("audit", help="check the audit log's hash chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="name every audit record that was changed, removed, reordered or inserted; exit 1 if any",
        description="Recomputes the hash chain of the audit records in TRIAGE_DATABASE_URL with the server "
        "secret ring (each chain with the secret it was linked under). Exit 0: every record verifies; 1: the "
        "problems are listed, oldest first.",
    )
    verify.add_argument(
        "--since", type=_timestamp, help="only records at or after this time (ISO 8601, such as 2026-11-01T00:00Z)"
    )
    commands.add_parser(
        "purge",
        help="delete what is past its retention (stored cases, usage detail, audit records); servers do it daily",
    )
    backup_parser = commands.add_parser(
        "backup",
        help="copy TRIAGE_DATABASE_URL to a file while the server runs (SQLite: online backup; PostgreSQL: pg_dump)",
    )
    backup_parser.add_argument("destination", type=Path, help="the backup file to write; it must not exist")
    restore_parser = commands.add_parser(
        "restore", help="load a backup into TRIAGE_DATABASE_URL, which must be a new, empty database"
    )
    restore_parser.add_argument("source", type=Path, help="a file written by `triage-server backup`")
    key_rings.add_parsers(commands)
    evaluate = add_evaluate_parser(commands)
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

    try:
        if args.command == "keys":
            return manage_keys(args)
        if args.command == "migrate":
            return migrate_schema(args)
        if args.command in ("backup", "restore"):
            return copy_database(args)
        if args.command == "audit":
            return verify_audit(args)
        if args.command == "purge":
            return purge_expired()
        if args.command in ("secret", "encryption-key"):
            return key_rings.run(args)
        if args.command == "serve":
            return serve()
    except (SchemaNotCurrent, BackupError, KeyRingError) as error:
        print(f"triage-server: {error}", file=sys.stderr)
        return 2
    return run_evaluate(args, evaluate)


def serve() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    unknown = Settings.unknown_variables()
    if unknown:
        logging.getLogger("triage.config").warning(
            "ignoring unknown TRIAGE_* variables", extra={"fields": {"variables": unknown}}
        )
    # Checked once here, before any worker starts, so that a behind schema is one clear message.
    engine = open_database(settings.database_url)
    try:
        schema.require_current(engine)
    finally:
        engine.dispose()
    # A bad ring file is one clear message here, not a traceback in each worker.
    load_secret_ring(settings)
    from server.workers import run

    return run(settings)


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2026-11-01T00:00Z") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Problems listed in full up to this many; then only their count.
_PROBLEMS_SHOWN = 50


def verify_audit(args: argparse.Namespace) -> int:
    """`triage-server audit verify`: the chain checked with the server secret."""
    settings = Settings()
    engine = open_database(settings.database_url)
    try:
        schema.require_current(engine)
        verified = chain.verify_database(engine, load_secret_ring(settings), args.since)
    finally:
        engine.dispose()
    scope = f"recorded since {args.since.isoformat()}" if args.since else "in the log"
    print(
        f"checked {verified.records} audit records {scope}, from {verified.writers} writers"
        + (f"; {verified.unchained} are from before the chain and cannot be verified" if verified.unchained else "")
    )
    if not verified.problems:
        print("every chained record verifies: none was changed, removed, reordered or inserted")
        return 0
    print(f"{len(verified.problems)} problems, oldest first:")
    for problem in verified.problems[:_PROBLEMS_SHOWN]:
        print(f"  {problem}")
    if len(verified.problems) > _PROBLEMS_SHOWN:
        print(f"  ... and {len(verified.problems) - _PROBLEMS_SHOWN} more")
    return 1


def purge_expired() -> int:
    """`triage-server purge`: what the servers' daily purge does, now."""
    settings = Settings()
    engine = open_database(settings.database_url)
    try:
        schema.require_current(engine)
        purged = retention.purge(engine, settings.retention())
    finally:
        engine.dispose()
    print(
        f"deleted {purged.stored_cases} stored cases (older than {settings.stored_case_retention_days} days), "
        f"{purged.usage_rows} usage rows ({settings.usage_retention_days} days) and "
        f"{purged.audit_records} audit records ({settings.audit_retention_days} days)"
    )
    return 0


def copy_database(args: argparse.Namespace) -> int:
    """`triage-server backup DEST` and `triage-server restore SRC`."""
    url = Settings().database_url
    if args.command == "backup":
        copied = backup.backup(url, args.destination)
        print(
            f"backed up {copied.audit_records} audit records (schema {copied.schema_revision}) "
            f"to {args.destination} in {copied.seconds:.1f} s; the server secret and the encryption key "
            "are not in it: keep their backup apart from this one"
        )
        return 0
    copied = backup.restore(args.source, url)
    print(
        f"restored {copied.audit_records} audit records (schema {copied.schema_revision}) in {copied.seconds:.1f} s; "
        "next: restore the server secret and encryption key, run `triage-server migrate` if this release is newer, "
        "then start the server"
    )
    return 0


def migrate_schema(args: argparse.Namespace) -> int:
    """`triage-server migrate`: the schema to head, or the SQL that would take it there."""
    url = Settings().database_url
    if args.sql:
        schema.upgrade_sql(url, sys.stdout, args.since)
        return 0
    before, after = schema.upgrade(url)
    if before == after:
        print(f"the schema is current (revision {after})")
    else:
        print(f"migrated the schema from revision {before or 'empty'} to {after}")
    return 0


# The named sets of server/evaluation.DATASETS (a test keeps them equal), listed here so that
# building the parser does not import the pipeline (about a second on every command).
EVALUATION_DATASETS = (
    "mimic-demo",
    "nhamcs-2016",
    "nhamcs-2017",
    "nhamcs-2018",
    "nhamcs-2020",
    "nhamcs-2021",
    "nhamcs-train",
    "nhamcs-test",
)


def add_evaluate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    evaluate = commands.add_parser(
        "evaluate",
        help="run labelled triage data through the pipeline and compare with the nurses' levels",
        description="Runs named datasets (all of them by default) and/or a MIMIC-IV-ED style CSV through "
        "validation and the pipeline, and reports agreement with the labels, resource agreement and "
        "critical-outcome capture. The labels are a nurse's or a hospital's rating, not truth.",
    )
    evaluate.add_argument(
        "csv", type=Path, nargs="?", default=None, help="a CSV in the layout of MIMIC-IV-ED's triage_with_age.csv"
    )
    evaluate.add_argument("--csv", dest="csv_option", type=Path, metavar="PATH", help="the same as the positional CSV")
    evaluate.add_argument(
        "--dataset",
        action="append",
        choices=EVALUATION_DATASETS,
        metavar="NAME",
        help=f"a named set, repeatable: {', '.join(EVALUATION_DATASETS)} (default: all, unless a CSV is given)",
    )
    evaluate.add_argument("--output", choices=("text", "json"), default="text")
    evaluate.add_argument(
        "--danger-zone-policy",
        choices=("up_triage", "flag_only", "learned"),
        default=None,
        help="shorthand for --config danger_zone_policy=...",
    )
    evaluate.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a runtime setting as `triage admin config set` takes it, such as step.resources=rules or "
        "danger_zone_policy=flag_only; repeatable. Without it: the default configuration",
    )
    return evaluate


def run_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`triage-server evaluate`: the figures for each set, as text or JSON."""
    from server.evaluation import run, runtime_config

    if args.csv is not None and args.csv_option is not None:
        parser.error("give the CSV once: as a path or as --csv")
    csv = args.csv if args.csv is not None else args.csv_option
    if csv is not None and not csv.is_file():
        parser.error(f"{csv}: no such file")
    names = args.dataset if args.dataset is not None else ([] if csv is not None else list(EVALUATION_DATASETS))
    assignments = list(args.config)
    if args.danger_zone_policy is not None:
        assignments.insert(0, f"danger_zone_policy={args.danger_zone_policy}")
    try:
        config = runtime_config(assignments)
    except ValueError as error:
        parser.error(str(error))
    from server.datasets import DATA_DIR

    if names and not DATA_DIR.is_dir():
        parser.error(f"the named sets are in {DATA_DIR}, which only a source checkout has; give a CSV instead")
    report = run(names, config, csv_paths=[csv] if csv is not None else [])
    print(json.dumps(report.as_dict(), indent=2) if args.output == "json" else report.text())
    return 0


def manage_keys(args: argparse.Namespace) -> int:
    """`triage-server keys ...`: works on the database, so it needs no running server and no key."""
    settings = Settings()
    engine = open_database(settings.database_url)
    schema.require_current(engine)
    store = ApiKeyStore(engine)
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
            load_secret_ring(settings).active,
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
