"""`triage-server`: serve, or evaluate the rules engine on labelled data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from server.config import Settings
from server.logs import configure_logging


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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
