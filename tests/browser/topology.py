"""The processes the browser talks to, started as production runs them.

`triage-server serve` (its own SQLite database, secret and keys), a fake OpenAI-compatible model
server (tests/fake_llm.py) as the provider `fake`, the fake OIDC provider of the web tier's tests
(tests/web/fake_oidc.py) that the server and the web tier both trust, and `triage-web` calling the
server with a gateway key. Each process logs to a file in the topology's directory, which a failing
test's report points to. The browser tests share one topology: what one test configures (the admin
test routes decision point B to the model) stays for the tests after it, which hold either way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from server.domain import Role
from server.identity.api_keys import issue_key
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from tests.e2e.processes import SECRET, parse_line, server_environment
from tests.fake_llm import FakeLLM, answer, start_fake_llm
from tests.web.fake_oidc import AUDIENCE, CLIENT_ID, FakeOidc, start_fake_oidc

T = TypeVar("T")
STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class Topology:
    directory: Path
    database_url: str
    server_target: str
    web_url: str
    admin_key: str
    # A gateway key with no limit of its own: the role's default (20 a day per visitor) applies.
    default_limit_gateway_key: str
    fake_llm: FakeLLM
    issuer: FakeOidc

    def url(self, path: str) -> str:
        return f"{self.web_url}{path}"


def make_key(database_url: str, role: Role, name: str, rate_limit: str = "") -> str:
    """A key made in the server's database as `triage-server keys create` makes it; returns its secret."""
    engine = open_database(database_url)
    try:
        return issue_key(ApiKeyStore(engine), SECRET.encode(), name=name, role=role, rate_limit=rate_limit).secret
    finally:
        engine.dispose()


@dataclass(frozen=True)
class _Running:
    process: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, found: Callable[[str], T | None]) -> T:
        """Reads the log until `found` returns something; fails if the process exits or takes too long."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if (value := found(line)) is not None:
                    return value
            if self.process.poll() is not None:
                raise RuntimeError(f"exited ({self.process.returncode}) before it served; its log: {self.log}")
            time.sleep(0.05)
        raise RuntimeError(f"did not serve within {STARTUP_SECONDS} s; its log: {self.log}")


@contextmanager
def _process(args: list[str], env: dict[str, str], directory: Path, name: str) -> Iterator[_Running]:
    """Runs a process with its output in `<directory>/<name>.log`; SIGTERM (then SIGKILL) afterwards."""
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield _Running(process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serving_port(line: str) -> int | None:
    entry = parse_line(line.encode())
    return int(str(entry["port"])) if entry.get("event") == "serving" else None


_LISTENING = re.compile(r"https?://127\.0\.0\.1:([1-9][0-9]*)")


def _web_port(line: str) -> int | None:
    match = _LISTENING.search(line)
    return int(match[1]) if match else None


def _healthy(url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@contextmanager
def web_process(topology: Topology, gateway_key: str, name: str = "web") -> Iterator[str]:
    """`triage-web` on a free port, calling the topology's server with `gateway_key`; yields its URL."""
    env = os.environ | {
        "TRIAGE_TARGET": topology.server_target,
        "TRIAGE_WEB_HOST": "127.0.0.1",
        "TRIAGE_WEB_PORT": "0",
        "TRIAGE_WEB_API_KEY": gateway_key,
        "TRIAGE_WEB_SESSION_SECRET": "browser-tests-session-secret-0123456789",
        "TRIAGE_WEB_OIDC_ISSUER": topology.issuer.url,
        "TRIAGE_WEB_OIDC_CLIENT_ID": CLIENT_ID,
        "TRIAGE_WEB_LOG_LEVEL": "info",
    }
    with _process([sys.executable, "-m", "triage_web"], env, topology.directory, name) as web:
        url = f"http://127.0.0.1:{web.wait_for(_web_port)}"
        _healthy(url)
        yield url


@contextmanager
def topology(directory: Path) -> Iterator[Topology]:
    """The whole topology in `directory`; everything stopped afterwards."""
    with ExitStack() as stack:
        fake_llm, model_http = start_fake_llm()
        fake_llm.defaults["high_risk"] = answer(high_risk=True, reasons=["chest pain radiating to the arm at rest"])
        stack.callback(model_http.server_close)
        stack.callback(model_http.shutdown)
        issuer, issuer_http = start_fake_oidc()
        stack.callback(issuer_http.server_close)
        stack.callback(issuer_http.shutdown)

        environment = server_environment(directory)
        database_url = environment["TRIAGE_DATABASE_URL"]
        admin_key = make_key(database_url, Role.ADMIN, "browser-admin")
        # The web tier's own key: a generous limit of its own, so that the tests' calls (all from 127.0.0.1)
        # do not spend one another's; the role's default of 20 a day is the rate-limit test's, on a key of its own.
        gateway_key = make_key(database_url, Role.GATEWAY, "browser-web", rate_limit="1000/day")
        default_limit_key = make_key(database_url, Role.GATEWAY, "browser-web-default-limit")
        server_env = environment | {
            "TRIAGE_OPENAI_PROVIDERS": json.dumps({"fake": {"base_url": fake_llm.url}}),
            "TRIAGE_OIDC_ISSUER": issuer.url,
            "TRIAGE_OIDC_AUDIENCE": AUDIENCE,
            "TRIAGE_OIDC_JWKS_URL": issuer.jwks_url,
            # One signed-in admin drives every page of these tests, several calls a page, faster than a
            # person: the role's default of 10 a second refused a save once ("Too many admin calls at once").
            "TRIAGE_RATE_LIMIT_ADMIN": "1000/second",
        }
        server = stack.enter_context(
            _process([sys.executable, "-m", "server", "serve"], server_env, directory, "server")
        )
        port = server.wait_for(_serving_port)
        partial = Topology(
            directory, database_url, f"127.0.0.1:{port}", "", admin_key, default_limit_key, fake_llm, issuer
        )
        yield dataclasses.replace(partial, web_url=stack.enter_context(web_process(partial, gateway_key)))
