"""The runbooks: one per alert and per procedure, their links resolve, and every command in them exists.

Each `triage` and `triage-server` command in a code block is parsed by the
real command line's argparse parser (nothing runs), and each `admin config set`
assignment by the client's own assignment code, so a renamed option, a
missing argument or a setting that does not exist fails here, not during an
incident.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from server import cli as server_cli
from tests.deploy.queries import ROOT, rules
from triage.v1 import admin_service_pb2
from triage_client import cli as client_cli

RUNBOOKS = ROOT / "docs" / "runbooks"
PROCEDURES = (
    "incident-response",
    "troubleshooting",
    "deployment",
    "rollback",
    "budget-exhausted",
    "model-provider-down",
    "database-down",
    "redis-down",
    "backup-restore",
    "key-rotation",
)
# Where else commands are given to operators.
OTHER_DOCUMENTS = (ROOT / "docs" / "data.md",)

_FENCE = re.compile(r"^\s*```")
_SUBSTITUTION = re.compile(r"\$\([^()]*\)")
_SEPARATORS = frozenset({"&&", "||", ";", "|"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def _code_lines(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def commands(path: Path) -> list[list[str]]:
    """Each `triage ...` / `triage-server ...` command in the code blocks of `path`, as argv.

    A command may follow environment assignments or another command (&&, ;, |);
    a $(...) substitution stands for one word.
    """
    found = []
    for line in _code_lines(path):
        words = shlex.split(_SUBSTITUTION.sub("SUBSTITUTED", line.replace("\\%", "%")), comments=True)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in _SEPARATORS:
                segment.append(word)
                continue
            while segment and _ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if segment and segment[0] in ("triage", "triage-server"):
                found.append(segment)
            segment = []
    return found


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """`argv` parsed by its program's parser; SystemExit (argparse's error) if it does not parse."""
    if argv[0] == "triage":
        return client_cli.build_parser().parse_args(argv[1:])
    # triage-server builds its parser inside main(): stop main right after parsing.
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(parse_args(self, *args, **kwargs))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        with pytest.raises(_Parsed) as parsed:
            server_cli.main(argv[1:])
    return parsed.value.namespace


DOCUMENTS = sorted(RUNBOOKS.glob("*.md")) + list(OTHER_DOCUMENTS)


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_every_command_exists(path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in commands(path):
        try:
            namespace = parse(argv, monkeypatch)
        except SystemExit:
            pytest.fail(f"{path.name}: `{shlex.join(argv)}` does not parse: {capsys.readouterr().err}")
        if getattr(namespace, "config_command", None) == "set":
            for assignment in namespace.assignments:
                try:
                    client_cli._assign(admin_service_pb2.Config(), assignment)
                except ValueError as error:
                    pytest.fail(f"{path.name}: `{assignment}` is no setting: {error}")


def test_the_runbooks_give_commands_to_check_and_to_act() -> None:
    """The parser test above reads enough: a broken extraction finding nothing would pass it."""
    found = [shlex.join(argv) for path in DOCUMENTS for argv in commands(path)]
    assert len(found) >= 40
    for expected in ("triage health", "triage admin backends", "triage-server migrate", "triage-server restore"):
        assert any(command.startswith(expected) for command in found), expected


def test_a_page_per_alert_and_per_procedure_each_linked_from_the_index() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages >= alerts | set(PROCEDURES)
    index = {Path(link).stem for link in _LINK.findall((RUNBOOKS / "README.md").read_text())}
    assert pages - index == set()


def test_every_link_between_pages_resolves() -> None:
    for path in RUNBOOKS.glob("*.md"):
        for link in _LINK.findall(path.read_text()):
            target = (path.parent / link).resolve()
            assert target.is_file(), f"{path.name} links to {link}, which does not exist"
