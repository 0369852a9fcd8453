"""Fixtures for the web tier: the real app served by uvicorn over HTTPS on 127.0.0.1:0, in front of the real
gRPC server of tests/conftest.py, and a browser-like HTTP client that keeps cookies."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn

from server.app import TriageServer
from server.calls import Role
from tests.certificates import CertificateAuthority
from triage_web.app import create_app
from triage_web.cli import listening_socket, server_config, url_of
from triage_web.settings import WebSettings

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Tls:
    ca: Path
    certificate: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """HTTPS for the web tier, as a browser needs for its Secure cookies."""
    directory = tmp_path_factory.mktemp("web-tls")
    ca = CertificateAuthority(directory, "web-ca")
    issued = ca.issue("web", server=True)
    return Tls(ca.certificate, issued.certificate, issued.key)


@dataclass
class WebTier:
    """A running web tier: its URL and settings."""

    url: str
    settings: WebSettings
    tls: Tls

    def browser(self, **options: Any) -> httpx2.AsyncClient:
        """A client that keeps cookies, as a browser does (a new one is a new visitor)."""
        return httpx2.AsyncClient(base_url=self.url, verify=self.tls.client_context(), timeout=10.0, **options)


StartWeb = Callable[..., Awaitable[WebTier]]


@pytest.fixture
async def start_web(tls: Tls) -> AsyncIterator[StartWeb]:
    """Starts web tiers (settings as keyword arguments); stops them at the end of the test."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**options: Any) -> WebTier:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "session_secret": "test-session-secret-0123456789abcdef",
        } | options
        settings = WebSettings(tls_cert=tls.certificate, tls_key=tls.key, **values)
        sock = listening_socket(settings.host, settings.port)
        server = uvicorn.Server(server_config(create_app(settings), settings))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        running.append((server, task))
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, it has no event
                await asyncio.sleep(0.01)
        return WebTier(url_of(sock, settings), settings, tls)

    yield start
    for server, task in running:
        server.should_exit = True
        await task


@pytest.fixture
async def web(start_web: StartWeb, server: TriageServer, keys: dict[Role, str]) -> WebTier:
    """The web tier in front of the test's gRPC server, with a gateway key when the server has the role."""
    gateway = getattr(Role, "GATEWAY", None)
    api_key = keys[gateway] if gateway is not None else None
    return await start_web(target=f"127.0.0.1:{server.port}", api_key=api_key)


@pytest.fixture
async def browser(web: WebTier) -> AsyncIterator[httpx2.AsyncClient]:
    async with web.browser() as client:
        yield client


def csrf_token(html: str) -> str:
    """The form token of a page."""
    match = _CSRF.search(html)
    assert match is not None, "the page has no form token"
    return match[1]


async def sign_in(browser: httpx2.AsyncClient, key: str) -> httpx2.Response:
    """Signs in with an admin API key as a person does: opens the page, posts its form."""
    page = await browser.get("/admin/sign-in")
    return await browser.post("/admin/sign-in", data={"api_key": key, "csrf_token": csrf_token(page.text)})


@pytest.fixture
async def admin(browser: httpx2.AsyncClient, keys: dict[Role, str]) -> httpx2.AsyncClient:
    """The browser, signed in as an admin."""
    response = await sign_in(browser, keys[Role.ADMIN])
    assert response.status_code == 303, response.text
    return browser
