"""`triage-web` as a process: it tells the URL it listens on (port 0: any free port) and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx2

from server.app import TriageServer
from server.calls import Role


async def test_triage_web_serves_on_the_port_it_prints_and_stops_on_sigterm(
    server: TriageServer, keys: dict[Role, str]
) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TRIAGE_")}
    environment |= {
        "TRIAGE_TARGET": f"127.0.0.1:{server.port}",
        "TRIAGE_WEB_PORT": "0",
        "TRIAGE_WEB_API_KEY": keys[Role.GATEWAY],
        "TRIAGE_WEB_SESSION_SECRET": "process-test-secret-0123456789abcdef",
        "TRIAGE_WEB_PROT": "8081",  # a typo: reported, not fatal
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "triage_web",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("triage-web listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        async with httpx2.AsyncClient(base_url=url) as browser:
            assert (await browser.get("/healthz")).text == "ok"
            page = await browser.get("/")
            assert 'id="case-form"' in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    # uvicorn shuts down gracefully, then ends by the signal it caught, as the supervisor expects.
    assert process.returncode == -signal.SIGTERM, stderr.decode()
    assert "Application shutdown complete" in stderr.decode()
    assert "TRIAGE_WEB_PROT is no setting of triage-web" in stderr.decode()


async def test_bad_settings_stop_it_with_a_clear_message() -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TRIAGE_")}
    environment["TRIAGE_WEB_SIGN_IN_RATE_LIMIT"] = "often"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "triage_web", env=environment, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert "sign_in_rate_limit" in stderr.decode()
