"""Real components as processes, for the load and fault scripts (topology, soak, chaos).

PostgreSQL, redis-server, the fake model server, `triage-server serve` replicas
and nginx, each a child process in its own process group with its output in a
file, that a script may kill (-9), pause (SIGSTOP), resume and restart on the
same port. Nothing here is imitated: a fault is a signal to a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.load import write_cases
from server.calls import Role
from server.identity.api_keys import issue_key
from server.store import schema
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from triage.v1.admin_service_pb2 import BackendPrice, Config, StepPolicy, Strategy, UpdateConfigRequest
from triage_client import AsyncTriageClient

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-stack-secret"
MODEL_PROVIDER = "fake"


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr of what a long script is doing, with the seconds since it began."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within_seconds: float = 30) -> None:
    """Polls `check` until it is true; TimeoutError naming `what` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not ready within {within_seconds} s")
        await asyncio.sleep(0.05)


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port, one per process bound with SO_REUSEPORT."""
    # gRPC binds IPv4 addresses as IPv4-mapped IPv6 ones, listed in tcp6.
    wanted = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    lines = [*Path("/proc/net/tcp").read_text().splitlines()[1:], *Path("/proc/net/tcp6").read_text().splitlines()[1:]]
    # Column 3 is the state; 0A is LISTEN.
    return sum(1 for line in lines if line.split()[1] in wanted and line.split()[3] == "0A")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the server's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def living(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def process_memory_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of one process, in MB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss, peak = (int(fields.get(name, "0 kB").split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))
    return rss, peak


def rss_mb(pid: int) -> float:
    return process_memory_mb(pid)[0]


class Child:
    """A process in its own process group, its output appended to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = os.environ | (env or {}) | {"PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        if self.process is not None:  # a restart: reap the one before (killed: this is immediate)
            self.process.wait(timeout=10)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> list[dict[str, Any]]:
        """The JSON lines logged since the last start (other lines are skipped)."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            entries = []
            for line in handle:
                with contextlib.suppress(json.JSONDecodeError):
                    entry = json.loads(line)
                    if isinstance(entry, dict):
                        entries.append(entry)
        return entries

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """kill -9 of the process alone (a supervisor's workers, if any, are left as they would be)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    async def stop(self, grace_seconds: float = 20) -> int | None:
        """SIGTERM, then SIGKILL of the whole group after the grace; the exit status."""
        if self.process is None:
            return None
        self.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, grace_seconds)
        self.kill_group()  # orphans included
        await asyncio.to_thread(self.process.wait)
        return self.process.returncode

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []


class Replica(Child):
    """`triage-server serve` with `workers` processes on a fixed port."""

    def __init__(self, name: str, directory: Path, port: int, workers: int, env: dict[str, str]) -> None:
        settings = {
            "TRIAGE_HOST": "127.0.0.1",
            "TRIAGE_PORT": str(port),
            "TRIAGE_WORKERS": str(workers),
            "TRIAGE_SECRET_KEY": SECRET,
            "TRIAGE_SECRET_KEY_FILE": str(directory / "secret.key"),
            "TRIAGE_LOG_LEVEL": "INFO",
        }
        super().__init__(name, [sys.executable, "-m", "server", "serve"], directory / f"{name}.log", env=settings | env)
        self.port = port
        self.workers = workers

    async def start(self) -> None:
        self.spawn()

        async def serving() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            return sum(1 for entry in self.log() if entry.get("event") == "serving") >= self.workers

        await eventually(serving, f"{self.name} on port {self.port}", within_seconds=60)

    def worker_pids(self) -> list[int]:
        """The serving processes: the workers of a supervisor, or the server itself."""
        if self.workers == 1:
            return [self.pid] if self.alive() else []
        pids = []
        for pid in self.tree()[1:]:
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids


def redis_server(directory: Path, port: int) -> Child:
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Child("redis", argv, directory / "redis.log")


async def start_redis(child: Child) -> None:
    child.spawn()
    port = int(child.argv[child.argv.index("--port") + 1])
    client = redis.asyncio.Redis(port=port, socket_timeout=1)

    async def pong() -> bool:
        try:
            return bool(await client.ping())  # type: ignore[misc]  # typed for sync and async at once
        except redis.RedisError:
            return False

    try:
        await eventually(pong, "redis-server")
    finally:
        await client.aclose()


def model_server(directory: Path, port: int, delay_seconds: float) -> Child:
    argv = [sys.executable, "-m", "bench.fake_model", "--port", str(port), "--delay-seconds", str(delay_seconds)]
    return Child("model", argv, directory / "model.log")


async def start_model(child: Child) -> None:
    child.spawn()
    port = int(child.argv[child.argv.index("--port") + 1])
    await eventually(lambda: accepts(port), "the model server")


def model_environment(port: int) -> dict[str, str]:
    """Settings that make the model server a provider: backends named fake:<model>."""
    return {"TRIAGE_OPENAI_PROVIDERS": json.dumps({MODEL_PROVIDER: {"base_url": f"http://127.0.0.1:{port}/v1"}})}


async def route_to_model(
    client: AsyncTriageClient,
    steps: tuple[str, ...],
    strategy: Strategy.ValueType,
    *,
    price: BackendPrice,
    global_budget_usd_micros: int | None = None,
) -> None:
    """Prices backend `price.backend`, routes `steps` to it, and sets the global budget if given."""
    current = (await client.get_config()).config
    config = Config(prices=[*(p for p in current.prices if p.backend != price.backend), price])
    mask = ["prices", *steps]
    for step in steps:
        getattr(config, step).CopyFrom(StepPolicy(backend=price.backend, strategy=strategy))
    if global_budget_usd_micros is not None:
        config.global_monthly_budget_usd_micros = global_budget_usd_micros
        mask.append("global_monthly_budget_usd_micros")
    request = UpdateConfigRequest(config=config, expected_version=current.version)
    request.update_mask.paths.extend(mask)
    await client.update_config(request)


NGINX_CONFIG = """\
# nginx in front of the replicas, as an unprivileged process (written by bench/stack.py).
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream triage {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://triage;
            # A refused connection goes to the other replica; a call already sent is not
            # replayed (it may have been classified): its caller gets UNAVAILABLE (502).
            grpc_next_upstream error timeout;
            grpc_connect_timeout 1s;
            grpc_read_timeout 60s;
            # nginx's own errors as gRPC statuses (trailers only), not HTML pages: a client
            # may retry UNAVAILABLE only when no response headers preceded it.
            error_page 502 503 504 = @unavailable;
        }}
        location @unavailable {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "the replica did not answer" always;
            return 200;
        }}
    }}
}}
"""


def nginx(directory: Path, port: int, upstream_ports: list[int]) -> Child:
    """nginx from a config of its own in `directory`, with grpc_pass to `upstream_ports`."""
    executable = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if executable is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx; .ci/run does)")
    prefix = directory / "nginx"
    prefix.mkdir(exist_ok=True)
    # A replica that fails is skipped for two seconds, then tried again.
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(prefix=prefix, port=port, servers=servers))
    argv = [executable, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Child("nginx", argv, directory / "nginx.log")


async def start_nginx(child: Child, port: int) -> None:
    child.spawn()

    async def up() -> bool:
        if not child.alive():
            raise RuntimeError(f"nginx exited: {child.log_path.read_text()}")
        return await accepts(port)

    await eventually(up, "nginx")


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".")])
    if not found:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql; .ci/run does)")
    return found[-1]


def _engine(url: str) -> Engine:
    return create_engine(make_url(url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")


@dataclass
class Postgres:
    """A PostgreSQL server (started by .ci/start-postgres) and the databases made on it."""

    server_url: str
    private: bool = False
    databases: list[str] = field(default_factory=list)
    _paused: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Where a private server keeps its files (and its postmaster.pid), asked while it answers.
        self._data = self._data_directory() if self.private else Path()

    @classmethod
    def start(cls, port: int | None = None) -> Postgres:
        """The shared test server (port 54329, or TEST_POSTGRES_URL), or a private one on `port` to fault."""
        if port is None and os.environ.get("TEST_POSTGRES_URL"):
            return cls(os.environ["TEST_POSTGRES_URL"])
        argv = [str(ROOT / ".ci" / "start-postgres"), *([str(port)] if port else [])]
        url = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
        return cls(url, private=port is not None)

    def create_database(self) -> str:
        """A fresh database, migrated as a deployment does before starting the servers; its URL."""
        name = f"triage_bench_{uuid.uuid4().hex[:12]}"
        engine = _engine(self.server_url)
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.databases.append(name)
        url = make_url(self.server_url).set(database=name).render_as_string(hide_password=False)
        schema.upgrade(url)
        return url

    def scalar(self, url: str, query: str) -> int:
        engine = _engine(url)
        try:
            with engine.connect() as connection:
                return int(connection.execute(text(query)).scalar() or 0)
        finally:
            engine.dispose()

    def audited(self, url: str) -> int:
        """Audit records (acknowledged or not) in the database at `url`."""
        return self.scalar(url, "SELECT count(*) FROM audit_events")

    def spent_usd_micros(self, url: str) -> int:
        return self.scalar(url, "SELECT coalesce(sum(usd_micros), 0) FROM usage_totals")

    def _data_directory(self) -> Path:
        engine = _engine(self.server_url)
        try:
            with engine.connect() as connection:
                return Path(str(connection.execute(text("SHOW data_directory")).scalar()))
        finally:
            engine.dispose()

    def _pg_ctl(self, arguments: str) -> None:
        command = f"{_postgres_bin() / 'pg_ctl'} {arguments}"
        # PostgreSQL refuses to run as root: as .ci/start-postgres does.
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", command] if os.getuid() == 0 else ["bash", "-c", command]
        subprocess.run(argv, check=True, capture_output=True)

    def _processes(self, data: Path) -> list[int]:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        return process_tree(postmaster)

    def _check_private(self) -> Path:
        if not self.private:
            raise RuntimeError("only a private PostgreSQL server may be faulted")
        return self._data

    def pause(self) -> None:
        """Every PostgreSQL process stopped (SIGSTOP): connections hang, nothing is refused."""
        self._paused = self._processes(self._check_private())
        for pid in self._paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._paused:
            os.kill(pid, signal.SIGCONT)

    def shut_down(self) -> None:
        """Immediate shutdown: as if the server crashed."""
        self._pg_ctl(f"-D {self._check_private()} -m immediate -w stop")

    def start_again(self) -> None:
        data = self._check_private()
        options = f"-p {make_url(self.server_url).port} -k {data} -c listen_addresses=127.0.0.1"
        self._pg_ctl(f"-D {data} -l {data / 'server.log'} -w -o '{options}' start")

    def close(self) -> None:
        """Drops the databases made here; a private server is stopped and its files removed."""
        if self.private:
            self._pg_ctl(f"-D {self._data} -m immediate -w stop")
            shutil.rmtree(self._data, ignore_errors=True)
            return
        engine = _engine(self.server_url)
        with engine.connect() as connection:
            for name in self.databases:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def create_key(database_url: str, role: Role, rate_limit: str) -> str:
    """A key in the replicas' database, as `triage-server keys create` makes it; its secret."""
    engine = open_database(database_url)
    try:
        issued = issue_key(ApiKeyStore(engine), SECRET.encode(), name=f"bench-{role}", role=role, rate_limit=rate_limit)
    finally:
        engine.dispose()
    return issued.secret


@dataclass
class Backing:
    """What the replicas share: a PostgreSQL database, redis-server, a model server; keys and cases."""

    directory: Path
    postgres: Postgres
    database_url: str
    redis: Child
    model: Child
    env: dict[str, str]
    keys: dict[str, str]
    cases: Path

    def replica(self, name: str, workers: int, port: int | None = None, **env: str) -> Replica:
        return Replica(name, self.directory, port or free_port(), workers, self.env | env)

    def audited(self) -> int:
        return self.postgres.audited(self.database_url)


@contextlib.asynccontextmanager
async def backing(
    directory: Path,
    *,
    private_postgres: bool = False,
    model_delay_seconds: float = 0.05,
    cases: int = 500,
    keys: dict[str, tuple[Role, str]] | None = None,
    **env: str,
) -> AsyncIterator[Backing]:
    """Starts PostgreSQL (a fresh database; a private server if it is to be faulted), Redis and a model server.

    Keys: "load" (service, no limit in reach) and "admin", with any more given as name: (role, limit).
    """
    postgres = await asyncio.to_thread(Postgres.start, free_port() if private_postgres else None)
    redis = redis_server(directory, free_port())
    model_port = free_port()
    model = model_server(directory, model_port, model_delay_seconds)
    try:
        database_url = await asyncio.to_thread(postgres.create_database)
        await asyncio.gather(start_redis(redis), start_model(model))
        wanted = {"load": (Role.SERVICE, "1000000/second"), "admin": (Role.ADMIN, "1000/second"), **(keys or {})}
        made = {name: await asyncio.to_thread(create_key, database_url, *spec) for name, spec in wanted.items()}
        settings = {
            "TRIAGE_DATABASE_URL": database_url,
            "TRIAGE_REDIS_URL": f"redis://127.0.0.1:{redis.argv[redis.argv.index('--port') + 1]}/0",
            # ESI as published at D, independent of the learned estimates.
            "TRIAGE_DANGER_ZONE_POLICY": "up_triage",
            **model_environment(model_port),
            **env,
        }
        data = await asyncio.to_thread(write_cases, directory / "cases.json", cases)
        progress("PostgreSQL, Redis and the model server ready")
        yield Backing(directory, postgres, database_url, redis, model, settings, made, data)
    finally:
        for child in (model, redis):
            await child.stop()
        await asyncio.to_thread(postgres.close)
