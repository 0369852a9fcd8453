"""The `triage` and `triage-server` commands, run as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from server.app import TriageServer
from server.calls import Role
from server.store.database import open_database
from tests.support import migrated_sqlite

ROOT = Path(__file__).resolve().parents[2]
TRIAGE = str(Path(sys.executable).with_name("triage"))
TRIAGE_SERVER = str(Path(sys.executable).with_name("triage-server"))
DEMO_CSV = ROOT / "tests" / "data" / "mimic-iv-ed-demo" / "triage_with_age.csv"


async def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | (env or {}),
    )
    out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def target(server: TriageServer, keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's address; `triage` finds its (admin) key in TRIAGE_API_KEY, as users set it."""
    monkeypatch.setenv("TRIAGE_API_KEY", keys[Role.ADMIN])
    return f"127.0.0.1:{server.port}"


async def test_classify_prints_a_readable_answer(target: str) -> None:
    code, out, _ = await run(
        TRIAGE, "--target", target, "classify", "--age", "67", "--sex", "male", "--complaint", "chest pain",
        "--hr", "110", "--bp", "150/90", "--spo2", "97",
    )  # fmt: skip

    assert code == 0
    assert out.startswith("ESI 2")
    assert "chest pain suspicious for acute coronary syndrome" in out
    assert "classification " in out


async def test_classify_json_from_stdin(target: str) -> None:
    case = {"age": {"months": 2}, "chief_complaint": "fever", "vitals": {"temperature_c": 38.4}}

    code, out, _ = await run(TRIAGE, "--target", target, "--output", "json", "classify", "--json", "-",
                             stdin=json.dumps(case))  # fmt: skip

    assert code == 0
    classification = json.loads(out)
    assert classification["esi_level"] == "ESI_LEVEL_2"
    assert "high_risk.young_infant_fever" in {f["code"] for f in classification["findings"]}


async def test_explain_prints_each_step_then_the_level(target: str) -> None:
    code, out, _ = await run(
        TRIAGE, "--target", target, "explain", "--age", "67", "--complaint", "CP radiating to L arm", "--hr", "88"
    )

    assert code == 0
    lines = out.splitlines()
    assert [line[0] for line in lines if line[:1] in "ABCDE" and line[1:3] == "  "] == ["A", "B", "E"]
    assert any(line.startswith("ESI 2") for line in lines)


async def test_explain_json_is_one_event_per_line(target: str) -> None:
    code, out, _ = await run(TRIAGE, "--target", target, "--output", "json", "explain", "--age", "30",
                             "--complaint", "ankle injury")  # fmt: skip

    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert "classification" in events[-1]
    assert all("step" in e for e in events[:-1])


async def test_bad_input_exits_1_and_names_the_fields(target: str) -> None:
    code, _, err = await run(TRIAGE, "--target", target, "classify", "--age", "200", "--complaint", "x",
                             "--hr", "500")  # fmt: skip

    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "case.age.years" in err
    assert "case.vitals.heart_rate_bpm" in err


async def test_usage_errors_exit_2(target: str) -> None:
    code, _, err = await run(TRIAGE, "--target", target, "classify", "--complaint", "cough")

    assert code == 2
    assert "--age" in err


async def test_health_uses_the_target_from_the_environment(target: str) -> None:
    code, out, _ = await run(TRIAGE, "health", env={"TRIAGE_TARGET": target})

    assert code == 0
    assert out.strip() == "SERVING"


async def test_health_of_an_unreachable_server_fails(unused_tcp_port: int) -> None:
    code, _, err = await run(TRIAGE, "--target", f"127.0.0.1:{unused_tcp_port}", "--timeout", "1", "health")

    assert code == 1
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


async def test_admin_audit_lists_what_was_classified(target: str) -> None:
    await run(TRIAGE, "--target", target, "classify", "--age", "67", "--complaint", "chest pain")

    code, out, _ = await run(TRIAGE, "--target", target, "admin", "audit")

    assert code == 0
    assert "ESI 2" in out
    assert len(out.splitlines()) == 1


async def test_admin_keys_create_list_and_revoke(target: str) -> None:
    code, out, _ = await run(
        TRIAGE, "--target", target, "admin", "keys", "create", "--name", "epic-test", "--role", "clinician",
        "--rate-limit", "5/second", "--expires-in", "30d",
    )  # fmt: skip
    assert code == 0
    secret = out.splitlines()[-1]
    key_id = secret[4:30]
    assert secret.startswith("tri_")
    assert key_id in out.splitlines()[0]

    code, out, _ = await run(TRIAGE, "--target", target, "admin", "keys", "list")
    assert code == 0
    [listed] = [line for line in out.splitlines() if line.startswith(key_id)]
    assert "role=clinician" in listed
    assert "rate_limit=5/second" in listed
    assert "expires=" in listed
    assert secret not in out

    as_new_key = {"TRIAGE_API_KEY": secret}
    classify = (TRIAGE, "--target", target, "classify", "--age", "40", "--complaint", "rash")
    assert (await run(*classify, env=as_new_key))[0] == 0
    code, out, _ = await run(TRIAGE, "--target", target, "admin", "keys", "revoke", key_id)
    assert code == 0
    assert "revoked=" in out
    code, _, err = await run(*classify, env=as_new_key)
    assert code == 1
    assert "UNAUTHENTICATED" in err


async def test_server_keys_commands_work_on_the_database(tmp_path: Path) -> None:
    env = {"TRIAGE_DATABASE_URL": migrated_sqlite(tmp_path / "keys.db"), "TRIAGE_SECRET_KEY": "cli-test"}
    code, out, _ = await run(TRIAGE_SERVER, "keys", "create", "--name", "ops", "--role", "admin", env=env)
    assert code == 0
    key_id = out.splitlines()[-1][4:30]

    code, out, _ = await run(TRIAGE_SERVER, "keys", "revoke", key_id, env=env)
    assert code == 0
    assert "revoked=" in out
    code, out, _ = await run(TRIAGE_SERVER, "keys", "list", env=env)
    assert code == 0
    assert key_id in out
    assert "revoked=" in out
    code, _, err = await run(TRIAGE_SERVER, "keys", "revoke", "01ARZ3NDEKTSV4RRFFQ69G5FAV", env=env)
    assert code == 1
    assert "no API key" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--rate-limit", "lots"), "rate_limit"),
        (("--expires-in", "soon"), "is not a duration"),
        (("--role", "superuser"), "invalid choice"),
    ],
)
async def test_server_keys_create_refuses_bad_options(tmp_path: Path, options: tuple[str, ...], message: str) -> None:
    env = {"TRIAGE_DATABASE_URL": migrated_sqlite(tmp_path / "keys.db"), "TRIAGE_SECRET_KEY": "cli-test"}
    arguments = {"--name": "x", "--role": "demo"} | dict(zip(options[::2], options[1::2], strict=True))
    code, _, err = await run(TRIAGE_SERVER, "keys", "create", *(v for pair in arguments.items() for v in pair), env=env)

    assert code == 2
    assert message in err


async def test_admin_config_get_and_set(target: str) -> None:
    code, out, _ = await run(TRIAGE, "--target", target, "admin", "config", "get")
    assert code == 0
    assert "version=0" in out.splitlines()
    assert "step.high_risk=learned" in out.splitlines()
    assert "price.openai:gpt-4o-mini=0.15,0.6" in out.splitlines()

    code, out, err = await run(
        TRIAGE, "--target", target, "admin", "config", "set",
        "price.openai:ft-triage=0.5,2", "step.high_risk=openai:ft-triage", "strategy.high_risk=most_urgent",
        "danger_zone_policy=flag_only", "budget.global_monthly_usd=50", "rate_limit.demo=5/hour",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert "version=1" in lines
    for expected in (
        "step.high_risk=openai:ft-triage",
        "strategy.high_risk=most_urgent",
        "danger_zone_policy=flag_only",
        "budget.global_monthly_usd=50",
        "price.openai:ft-triage=0.5,2",
        "rate_limit.demo=5/hour",
    ):
        assert expected in lines

    code, _, err = await run(
        TRIAGE, "--target", target, "admin", "config", "set",
        "step.resources=openai:gpt-4o-mini", "strategy.resources=rules",
    )  # fmt: skip
    assert code == 0
    assert "note: strategy.resources=rules, so openai:gpt-4o-mini is not asked" in err

    code, _, err = await run(TRIAGE, "--target", target, "admin", "config", "set", "step.high_risk=openai:unpriced")
    assert code == 1
    assert "config.high_risk.backend" in err
    code, _, err = await run(TRIAGE, "--target", target, "admin", "config", "set", "strategy.high_risk=sometimes")
    assert code == 2
    assert "most_urgent" in err


async def test_admin_backends_and_usage(target: str) -> None:
    code, out, _ = await run(TRIAGE, "--target", target, "admin", "backends")
    assert code == 0
    assert any(line.startswith("openai:gpt-4o-mini  input 0.15 output 0.6") for line in out.splitlines())
    assert "rules  input 0 output 0 USD per million tokens  circuit closed" in out

    code, out, _ = await run(TRIAGE, "--target", target, "admin", "usage")
    assert code == 0
    assert "budget global: 0.000000 USD of 20.000000 USD (0%)" in out


async def test_evaluate_reports_agreement_and_a_confusion_matrix() -> None:
    code, out, _ = await run(TRIAGE_SERVER, "evaluate", str(DEMO_CSV))

    assert code == 0
    assert "evaluated 207" in out
    assert "confusion matrix" in out
    assert "under-triage" in out


def test_the_commands_are_installed() -> None:
    assert shutil.which(TRIAGE)
    assert shutil.which(TRIAGE_SERVER)


async def test_a_database_behind_the_code_is_migrated_before_anything_serves_from_it(tmp_path: Path) -> None:
    env = {
        "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}",
        "TRIAGE_SECRET_KEY": "cli-test",
        "TRIAGE_PORT": "0",
    }
    for command in (("serve",), ("keys", "list")):
        code, _, err = await run(TRIAGE_SERVER, *command, env=env)
        assert code == 2, command
        assert "has no schema version" in err
        assert "run `triage-server migrate`" in err

    code, out, _ = await run(TRIAGE_SERVER, "migrate", env=env)
    assert code == 0
    assert "migrated the schema from revision empty to" in out
    code, out, _ = await run(TRIAGE_SERVER, "migrate", env=env)
    assert code == 0
    assert "the schema is current" in out
    code, _, _ = await run(TRIAGE_SERVER, "keys", "list", env=env)
    assert code == 0


async def test_migrate_prints_the_sql_for_a_dba_without_touching_the_database(tmp_path: Path) -> None:
    env = {"TRIAGE_DATABASE_URL": "postgresql://dba@db.invalid/triage"}
    code, out, _ = await run(TRIAGE_SERVER, "migrate", "--sql", env=env)
    assert code == 0
    assert "CREATE TABLE audit_events" in out
    assert "TIMESTAMP WITH TIME ZONE" in out  # PostgreSQL's dialect, for the database it names
    assert "INSERT INTO alembic_version" in out


async def test_backup_and_restore_commands(tmp_path: Path) -> None:
    live = {"TRIAGE_DATABASE_URL": migrated_sqlite(tmp_path / "live.db"), "TRIAGE_SECRET_KEY": "cli-test"}
    code, out, _ = await run(TRIAGE_SERVER, "keys", "create", "--name", "ops", "--role", "admin", env=live)
    assert code == 0
    key_id = out.splitlines()[-1][4:30]
    code, out, _ = await run(TRIAGE_SERVER, "backup", str(tmp_path / "live.backup"), env=live)
    assert code == 0
    assert "not in it" in out  # the secret's backup is the operator's, apart from this one

    restored = live | {"TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'restored.db'}"}
    code, out, _ = await run(TRIAGE_SERVER, "restore", str(tmp_path / "live.backup"), env=restored)
    assert code == 0
    code, out, _ = await run(TRIAGE_SERVER, "keys", "list", env=restored)
    assert key_id in out
    code, out, _ = await run(TRIAGE_SERVER, "audit", "verify", env=restored)
    assert code == 0, out
    assert "none was changed, removed, reordered or inserted" in out
    code, _, err = await run(TRIAGE_SERVER, "restore", str(tmp_path / "live.backup"), env=restored)
    assert code == 2
    assert "not empty" in err


async def test_audit_verify_names_a_changed_record(target: str, server: TriageServer) -> None:
    code, _, _ = await run(TRIAGE, "--target", target, "classify", "--age", "67", "--complaint", "chest pain")
    assert code == 0
    env = {"TRIAGE_DATABASE_URL": server.settings.database_url, "TRIAGE_SECRET_KEY": "test-secret"}
    code, out, _ = await run(TRIAGE_SERVER, "audit", "verify", env=env)
    assert code == 0, out
    assert "checked 1 audit records in the log, from 1 writers" in out

    engine = open_database(server.settings.database_url)
    with engine.begin() as connection:
        changed = connection.execute(text("UPDATE audit_events SET esi_level = 5 RETURNING classification_id")).scalar()
    engine.dispose()
    code, out, _ = await run(TRIAGE_SERVER, "audit", "verify", env=env)
    assert code == 1
    assert f"record {changed} (writer" in out
    assert "changed or reordered" in out
