"""One real server process for the fuzz suite, and a caller that sends any bytes to any RPC.

The server runs as `triage-server serve` would in production, in its own
process, so that the fuzzer (Hypothesis in this process) and the server do
not share an interpreter. Requests are sent as raw bytes through generic
multicallables with identity serializers: a generated message and a mutated
one travel the same way, and the status is what a caller would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2

from triage.v1 import admin_service_pb2, classify_service_pb2, explain_service_pb2

# What a caller may see whatever it sends. INTERNAL and UNKNOWN mean a fault of ours; CANCELLED
# and DATA_LOSS are never the server's answer to a request it read.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)

# Every RPC of every service the server offers, from the contract.
METHODS: tuple[MethodDescriptor, ...] = tuple(
    method
    for module, service in (
        (classify_service_pb2, "ClassifyService"),
        (explain_service_pb2, "ExplainService"),
        (admin_service_pb2, "AdminService"),
    )
    for method in module.DESCRIPTOR.services_by_name[service].methods
)


@dataclass(frozen=True)
class Outcome:
    method: str
    caller: str
    code: grpc.StatusCode
    details: str
    request: bytes
    # The fields a BadRequest in the status details names.
    violations: tuple[str, ...] = ()


@dataclass
class FuzzServer:
    """`triage-server serve` in a directory of its own, with its JSON log in a file."""

    directory: Path
    environment: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "server.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=self.directory,
                env=os.environ | self.environment,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for entry in self.log():
                if entry.get("event") == "serving":
                    self.port = int(str(entry["port"]))
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the fuzz server did not start: {self.log_path.read_text()[-4000:]}")

    def log(self, offset: int = 0) -> Iterator[dict[str, object]]:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            for line in log:
                if not line.endswith(b"\n"):
                    break  # a line still being written: read whole on a later call
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    entry = {"event": "raw", "text": line.decode(errors="replace")}
                if isinstance(entry, dict):
                    yield entry

    def log_size(self) -> int:
        """Where the log's last whole line ends: an offset that never falls inside a line."""
        content = self.log_path.read_bytes()
        return content.rfind(b"\n") + 1

    def faults_since(self, offset: int) -> list[dict[str, object]]:
        """Log lines since `offset` that show a fault: any error (an unexpected exception, a failed write),
        a call that ended INTERNAL or UNKNOWN, anything but a JSON line."""
        return [
            entry
            for entry in self.log(offset)
            if entry.get("level") == "error"
            or entry.get("event") == "raw"
            or entry.get("code") in ("INTERNAL", "UNKNOWN")
        ]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Caller:
    """Sends raw request bytes to any RPC, as any caller, several at once."""

    def __init__(self, target: str, credentials: dict[str, tuple[tuple[str, str], ...]], concurrency: int = 8) -> None:
        self._channel = grpc.insecure_channel(target)
        self._credentials = credentials
        self._pool = ThreadPoolExecutor(concurrency)
        self.calls = 0

    def close(self) -> None:
        self._pool.shutdown()
        self._channel.close()

    def path(self, method: MethodDescriptor) -> str:
        return f"/{method.containing_service.full_name}/{method.name}"

    def call(
        self, method: MethodDescriptor, request: bytes, caller: str, timeout: float | None = 10.0
    ) -> tuple[Outcome, list[bytes]]:
        """The status of one call, and its responses (several for a stream)."""
        metadata = self._credentials[caller]
        if caller == "hurried":
            timeout = 0.01
        self.calls += 1
        responses: list[bytes] = []
        try:
            if method.server_streaming:
                stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = self._channel.unary_stream(self.path(method))
                responses.extend(stream(request, metadata=metadata, timeout=timeout))
            else:
                unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(self.path(method))
                responses.append(unary(request, metadata=metadata, timeout=timeout))
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            violations = _violations(error)
            return Outcome(method.full_name, caller, code, details, request, violations), responses
        # What the server answers must parse as the contract's response (DecodeError fails the test).
        response_type = message_factory.GetMessageClass(method.output_type)
        for response in responses:
            response_type.FromString(response)
        return Outcome(method.full_name, caller, grpc.StatusCode.OK, "", request), responses

    def batch(self, calls: list[tuple[MethodDescriptor, bytes, str]]) -> list[Outcome]:
        """Sends every call at once (as concurrent callers would); their outcomes in order."""
        futures = [self._pool.submit(self.call, method, request, caller) for method, request, caller in calls]
        return [future.result()[0] for future in futures]


def _violations(error: grpc.RpcError) -> tuple[str, ...]:
    """The fields named by the BadRequest in an error's status details."""
    fields: list[str] = []
    for item in error.trailing_metadata() or ():
        if item.key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(item.value).details:
                request = error_details_pb2.BadRequest()
                if detail.Unpack(request):
                    fields += (v.field for v in request.field_violations)
    return tuple(fields)
