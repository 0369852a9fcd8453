"""Supervision: workers die with their supervisor, a dead worker is restarted, orphans keep their port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.e2e.processes import ServerProcess, create_key, parse_line, server_environment, start_server
from tests.e2e.test_scale_out import _free_port, _metric
from tests.support import eventually, make_case
from triage.v1.classification_pb2 import Classification
from triage_client import AsyncTriageClient, Unavailable

CASE = make_case("ankle injury", "30y")
# Each test starts worker processes two or three times: slow on a busy 2-core machine.
pytestmark = pytest.mark.timeout(120)


def _worker_pids(server: ServerProcess) -> list[int]:
    return [int(str(e["pid"])) for e in server.log if e["event"] == "serving"]


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _port_is_free(port: int) -> bool:
    """Nothing listens on the port (SO_REUSEADDR: closed connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _serve_to_the_end(directory: Path, port: int) -> tuple[int, list[dict[str, object]]]:
    """Runs a one-process server on `port` that is expected to refuse to start; its exit code and log."""
    environment = server_environment(directory) | {"TRIAGE_PORT": str(port), "TRIAGE_WORKERS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", cwd=directory, env=environment, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    return process.returncode or 0, [parse_line(line) for line in err.splitlines()]


async def _classify_retrying(target: str, key: str) -> Classification:
    """Classify on a new connection, once more on another if the first is refused as unavailable."""
    for attempt in range(2):
        try:
            async with AsyncTriageClient(target, api_key=key) as client:
                return await client.classify(CASE)
        except Unavailable:
            if attempt:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def _stop(server: ServerProcess) -> int:
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        await server.read_log()
        return await server.process.wait()


async def test_workers_die_with_a_killed_supervisor_and_no_server_binds_beside_another(tmp_path: Path) -> None:
    key = await create_key(tmp_path, "service")
    port = _free_port()
    server = await start_server(tmp_path, TRIAGE_WORKERS="2", TRIAGE_PORT=str(port))
    await server.wait_for("serving", count=2)
    stopped, running = _worker_pids(server)
    # Even a worker that could not act on a signal of its own goes: the kernel kills it.
    os.kill(stopped, signal.SIGSTOP)

    server.process.kill()

    async def workers_gone() -> bool:
        # Not process.wait(): that waits for stderr to close too.
        return server.process.returncode is not None and not _alive(running) and not _alive(stopped)

    await eventually(workers_gone, within_seconds=5)
    await eventually(lambda: _port_freed(port), within_seconds=5)
    again = await start_server(tmp_path, TRIAGE_WORKERS="2", TRIAGE_PORT=str(port))
    try:
        await again.wait_for("serving", count=2)
        async with AsyncTriageClient(f"127.0.0.1:{port}", api_key=key) as client:
            assert (await client.classify(CASE)).classification_id
        # A second server on the same port refuses to start rather than serve beside it (SO_REUSEPORT).
        code, log = await _serve_to_the_end(tmp_path, port)
        assert code == 1
        assert [e["event"] for e in log if e["event"] in ("serving", "not starting: port in use")] == [
            "not starting: port in use"
        ]
    finally:
        assert await _stop(again) == 0


async def _port_freed(port: int) -> bool:
    return _port_is_free(port)


async def test_a_killed_worker_is_restarted_and_the_server_keeps_answering(tmp_path: Path) -> None:
    key = await create_key(tmp_path, "service")
    metrics_port = _free_port()
    server = await start_server(tmp_path, TRIAGE_WORKERS="2", TRIAGE_METRICS_PORT=str(metrics_port))
    await server.wait_for("serving", count=2)
    victim, survivor = _worker_pids(server)

    os.kill(victim, signal.SIGKILL)

    async def victim_dead() -> bool:
        return not _alive(victim)

    await eventually(victim_dead, within_seconds=5)
    target = f"127.0.0.1:{server.port}"
    # Callers keep being answered while the dead worker is away. A connection caught in its
    # death may be reset (UNAVAILABLE, retryable): a caller that tries again is answered.
    for _ in range(10):
        assert (await _classify_retrying(target, key)).classification_id
    await server.wait_for("serving", count=3)
    replacement = _worker_pids(server)[-1]
    assert replacement not in (victim, survivor)
    # New connections spread over both workers again, the replacement included.
    for _ in range(30):
        async with AsyncTriageClient(target, api_key=key) as client:
            await client.classify(CASE)
    restarts = await asyncio.to_thread(_metric, metrics_port, "triage_worker_restarts_total")
    code = await _stop(server)

    assert code == 0
    died = [e for e in server.log if e["event"] == "a worker died; restarting it"]
    assert [(e["worker_pid"], e["exit_code"]) for e in died] == [(victim, -signal.SIGKILL)]
    assert restarts == 1
    served_by = {e["pid"] for e in server.log if e["event"] == "call"}
    assert replacement in served_by
