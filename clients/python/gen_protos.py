"""Generates the Python package triage.v1 from proto/ with the pinned grpcio-tools.

Messages, gRPC stubs and .pyi types for both (mypy-protobuf) land in
src/triage/v1. Never edit the output: change the .proto and run `make proto`.
tests/test_generated_code.py fails when the committed output is stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PACKAGE_DIR = HERE / "src" / "triage" / "v1"
INIT_DOCSTRING = '"""Generated from proto/triage/v1 by clients/python/gen_protos.py. Do not edit."""\n'


def generate(out_root: Path) -> None:
    """Writes the generated package triage/v1 under out_root."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "triage" / "v1").glob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / "triage" / "__init__.py").write_text(INIT_DOCSTRING)
    (out_root / "triage" / "v1" / "__init__.py").write_text(INIT_DOCSTRING)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        shutil.rmtree(PACKAGE_DIR, ignore_errors=True)
        shutil.copytree(Path(tmp) / "triage" / "v1", PACKAGE_DIR)
        shutil.copy(Path(tmp) / "triage" / "__init__.py", PACKAGE_DIR.parent / "__init__.py")
    print(f"generated {PACKAGE_DIR.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
