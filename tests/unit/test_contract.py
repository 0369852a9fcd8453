"""The contract and its generated code: fresh, complete, and fully covered by the client."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import MethodDescriptor

from triage.v1 import admin_service_pb2, classify_service_pb2, explain_service_pb2
from triage_client import AsyncTriageClient, TriageClient

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "python" / "src" / "triage" / "v1"
SERVICES = [
    d.services_by_name[name]
    for d, name in (
        (classify_service_pb2.DESCRIPTOR, "ClassifyService"),
        (explain_service_pb2.DESCRIPTOR, "ExplainService"),
        (admin_service_pb2.DESCRIPTOR, "AdminService"),
    )
]


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "clients" / "python" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)

    gen_protos.generate(tmp_path)

    fresh = {p.name: p.read_bytes() for p in (tmp_path / "triage" / "v1").iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert stale == [], "generated code is stale: run `make proto`"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("client_class", [TriageClient, AsyncTriageClient])
@pytest.mark.parametrize(
    "method", [m for s in SERVICES for m in s.methods], ids=lambda m: f"{m.containing_service.name}.{m.name}"
)
def test_the_client_covers_every_rpc(client_class: type, method: MethodDescriptor) -> None:
    name = _snake(method.name)

    assert callable(getattr(client_class, name, None)), f"{client_class.__name__} lacks {name}"


def test_the_async_client_is_async_everywhere() -> None:
    for name, member in inspect.getmembers(AsyncTriageClient, inspect.isfunction):
        # with_caller makes a client on the same channel: no call, nothing to await.
        if not name.startswith("_") and name not in ("close", "with_caller"):
            assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name


def test_generated_package_is_typed() -> None:
    assert (GENERATED / "classify_service_pb2.pyi").exists()
    assert (GENERATED / "classify_service_pb2_grpc.pyi").exists()
    assert (GENERATED.parent / "py.typed").exists()
