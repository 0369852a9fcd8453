"""`buf breaking` in make lint compares the contract with the last release's image (api-releases/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).with_name("buf")


def _release() -> Path:
    """The image make lint compares against (the Makefile's API_RELEASE)."""
    match = re.search(r"^API_RELEASE := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match is not None, "the Makefile names no API_RELEASE"
    return ROOT / match.group(1)


RELEASE = _release()


def breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUF, "breaking", str(workspace), "--against", str(RELEASE)], capture_output=True, text=True, check=False
    )


def contract_copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path


def test_the_contract_is_compatible_with_the_last_release(tmp_path: Path) -> None:
    result = breaking(contract_copy(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_a_removed_field_is_a_breaking_change(tmp_path: Path) -> None:
    workspace = contract_copy(tmp_path)
    classification = workspace / "proto" / "triage" / "v1" / "classification.proto"
    text = classification.read_text()
    assert "  string rationale = 9;\n" in text
    classification.write_text(text.replace("  string rationale = 9;\n", ""))

    result = breaking(workspace)

    assert result.returncode != 0
    assert 'Previously present field "9" with name "rationale" on message "Classification" was deleted' in result.stdout


def test_a_changed_language_package_is_a_breaking_change(tmp_path: Path) -> None:
    workspace = contract_copy(tmp_path)
    case = workspace / "proto" / "triage" / "v1" / "case.proto"
    case.write_text(case.read_text().replace('java_package = "org.example.triage.v1"', 'java_package = "org.other"'))

    result = breaking(workspace)

    assert result.returncode != 0
    assert "java_package" in result.stdout
