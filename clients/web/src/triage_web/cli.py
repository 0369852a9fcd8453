"""`triage-web`: serves the web tier with uvicorn, as TRIAGE_WEB_* configure it."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette

from triage_web.app import create_app
from triage_web.settings import WebSettings

log = logging.getLogger("triage_web")


def server_config(app: Starlette, settings: WebSettings) -> uvicorn.Config:
    """uvicorn's configuration: no access log (it would name every visitor's address), TLS when configured,
    X-Forwarded-* only from the proxies named in TRIAGE_WEB_FORWARDED_ALLOW_IPS."""
    return uvicorn.Config(
        app,
        access_log=False,
        log_config=None,
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        server_header=False,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        timeout_graceful_shutdown=5,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: any free port) and listening, so its URL can be told before serving."""
    [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, settings: WebSettings) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.tls_cert else 'http'}://{host}:{port}"


def main() -> None:
    try:
        settings = WebSettings()
    except ValidationError as error:
        print(f"triage-web: bad settings\n{error}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    for name in WebSettings.unknown_variables():
        log.warning("%s is no setting of triage-web (a typo?)", name)
    sock = listening_socket(settings.host, settings.port)
    server = uvicorn.Server(server_config(create_app(settings), settings))
    url = url_of(sock, settings)
    print(f"triage-web listening on {url}", flush=True)
    log.info("listening on %s, calling %s", url, settings.target)
    asyncio.run(server.serve(sockets=[sock]))
