"""The deployment kit fits the server it deploys: the Dockerfile, deploy/k8s and deploy/compose.

Checked without the tools they are for (no cluster, no Docker daemon in CI): every TRIAGE_* variable
is a setting and the values given validate, probes ask the gRPC port for health names the server
reports, selectors and port names meet, every container has resources and runs unprivileged, and
every command given to the server's CLI parses there.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server import cli
from server.app import AUDITED_HEALTH_NAMES, SERVICE_NAMES, TriageServer
from server.config import WEB_PREFIX as WEB
from server.config import Settings
from triage_web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
RULES = ROOT / "deploy" / "prometheus" / "triage.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "triage.json"
SETTINGS = {f"TRIAGE_{name.upper()}" for name in Settings.model_fields}


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def image_environment() -> dict[str, str]:
    """The ENV of the image's last stage."""
    final = max(i for i, (keyword, _) in enumerate(dockerfile()) if keyword == "FROM")
    pairs = (
        pair.partition("=") for keyword, rest in dockerfile()[final:] if keyword == "ENV" for pair in shlex.split(rest)
    )
    return {name: value for name, _, value in pairs}


def env_file(path: Path, commented: bool = False) -> dict[str, str]:
    """NAME=value lines; with `commented`, also the optional ones written as '# NAME='."""
    pattern = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$" if commented else r"^([A-Z][A-Z0-9_]*)=(.*)$")
    return {m[1]: m[2] for m in map(pattern.match, path.read_text().splitlines()) if m}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s() -> dict[str, Any]:
    """Every resource the kustomization lists, by kind and name ('Deployment/triage-server')."""
    kustomization = load(K8S / "kustomization.yaml")
    resources = (load(K8S / name) for name in kustomization["resources"])
    return {f"{r['kind']}/{r['metadata']['name']}": r for r in resources}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod template of each workload: the server, the migration Job, the backup CronJob."""
    resources = k8s()
    yield "Deployment", resources["Deployment/triage-server"]["spec"]["template"]
    yield "Job", resources["Job/triage-migrate"]["spec"]["template"]
    yield "CronJob", resources["CronJob/triage-backup"]["spec"]["jobTemplate"]["spec"]["template"]


def web_pod() -> dict[str, Any]:
    pod: dict[str, Any] = k8s()["Deployment/triage-web"]["spec"]["template"]
    return pod


def server_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = k8s()["Deployment/triage-server"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def compose() -> dict[str, Any]:
    services: dict[str, Any] = load(COMPOSE / "compose.yaml")["services"]
    return services


def triage_services() -> dict[str, Any]:
    """The compose services that run the triage server's commands (the image also runs the web tier)."""
    return {
        name: s
        for name, s in compose().items()
        if str(s.get("image", "")).startswith("triage-server")
        and s.get("command", ["triage-server"])[0] != "triage-web"
    }


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No TRIAGE_* variable of the test run's own reaches Settings."""
    for name in Settings.unknown_variables() + sorted(SETTINGS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_kustomization_lists_every_manifest_here() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == manifests
    assert [g["envs"] for g in kustomization["configMapGenerator"]] == [["triage.env"], ["web.env"]]
    # The secret files are the operator's and never committed; their examples name what they hold.
    secrets = [g["envs"] for g in kustomization["secretGenerator"]]
    assert secrets == [["secret.env"], ["web-secret.env"]]
    for [name] in secrets:
        assert (K8S / f"{name}.example").is_file()
        assert f"deploy/k8s/{name}" in (ROOT / ".gitignore").read_text().splitlines()


def _named_variables() -> Iterator[tuple[str, set[str]]]:
    yield "Dockerfile", set(image_environment())
    yield "deploy/k8s/triage.env", set(env_file(K8S / "triage.env"))
    yield "deploy/k8s/secret.env.example", set(env_file(K8S / "secret.env.example", commented=True))
    for kind, pod in pod_specs():
        for container in pod["spec"]["containers"]:
            if "env" in container:
                yield f"{kind} {container['name']}", {e["name"] for e in container["env"]}
    for name, service in triage_services().items():
        yield f"compose {name}", set(service.get("environment", {}))
    yield "deploy/compose/.env.example", {n for n in env_file(COMPOSE / ".env.example") if not n.startswith(WEB)}


@pytest.mark.parametrize(("where", "names"), [pytest.param(*v, id=v[0]) for v in _named_variables()])
def test_every_triage_variable_is_a_setting(where: str, names: set[str]) -> None:
    triage_names = {name for name in names if name.startswith("TRIAGE_")}

    assert triage_names, f"{where} configures nothing"
    assert triage_names <= SETTINGS, f"{where}: not settings of server/config.py: {sorted(triage_names - SETTINGS)}"


def test_the_compose_web_tier_is_configured_with_its_own_settings(clean_environment: pytest.MonkeyPatch) -> None:
    web = compose()["web"]
    environment = {name: str(value) for name, value in web["environment"].items()}
    # What .env must hold for it, given here as placeholders for the values an operator makes.
    placeholders = {name: "x" * 48 for name in env_file(COMPOSE / ".env.example") if name.startswith(WEB)}
    assert {name for name, value in environment.items() if value.startswith("${")} == set(placeholders)
    for name, value in (environment | placeholders).items():
        clean_environment.setenv(name, value)

    settings = WebSettings()

    assert WebSettings.unknown_variables(environment) == []
    assert web["command"] == ["triage-web"]
    assert web["image"] == compose()["triage"]["image"]
    assert settings.target == "nginx:50051"
    assert "nginx" in web["depends_on"]
    assert settings.host == "0.0.0.0"
    assert web["ports"] == [f"127.0.0.1:{settings.port}:{settings.port}"]
    assert web["read_only"] is True
    assert web["cap_drop"] == ["ALL"]


def test_the_kubernetes_web_tier_reaches_the_server_and_is_reached_on_its_port(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    config = env_file(K8S / "web.env")
    secrets = env_file(K8S / "web-secret.env.example")
    assert WebSettings.unknown_variables(config | secrets) == []
    for name, value in (config | dict.fromkeys(secrets, "x" * 48)).items():
        clean_environment.setenv(name, value)
    settings = WebSettings()
    resources = k8s()
    pod = web_pod()
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service, policy = resources["Service/triage-web"], resources["NetworkPolicy/triage-web"]["spec"]
    server_service = resources["Service/triage-server"]
    grpc_port = next(p["port"] for p in server_service["spec"]["ports"] if p["name"] == "grpc")

    assert container["args"] == ["triage-web"]
    assert container["image"] == server_container()["image"]
    assert {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e} == {"triage-web-config"}
    assert {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e} == {"triage-web-secrets"}
    # It calls the server through the server's Service, on its gRPC port; the policies let it.
    assert settings.target == f"{server_service['metadata']['name']}:{grpc_port}"
    assert any(
        _selected(rule["to"][0]["podSelector"]["matchLabels"], server_service["spec"]["selector"])
        and {p["port"] for p in rule["ports"]} == {grpc_port}
        for rule in policy["egress"]
        if "to" in rule
    )
    assert any("from" not in rule and grpc_port in {p["port"] for p in rule["ports"]} for rule in server_policy())
    # It listens where the probes, the Service and its policy look.
    assert settings.host == "0.0.0.0"
    assert ports == {"http": settings.port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert _selected(resources["Deployment/triage-web"]["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert _selected(service["spec"]["selector"], pod["metadata"]["labels"])
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    assert _selected(policy["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {settings.port}
    # The server's policy does not select the web pods (it admits its metrics port to monitoring only).
    assert not _selected(
        resources["NetworkPolicy/triage-server"]["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]
    )


def server_policy() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = k8s()["NetworkPolicy/triage-server"]["spec"]["ingress"]
    return rules


def test_the_image_and_the_configmap_make_valid_settings(clean_environment: pytest.MonkeyPatch) -> None:
    for name, value in image_environment().items():
        if name.startswith("TRIAGE_"):
            clean_environment.setenv(name, value)
    image = Settings()
    for name, value in env_file(K8S / "triage.env").items():
        clean_environment.setenv(name, value)
    pod = Settings()

    # The image keeps the unauthenticated metrics endpoint on loopback; the manifests choose to expose it.
    assert image.metrics_host == "127.0.0.1"
    assert pod.metrics_host == "0.0.0.0"
    assert image.workers == pod.workers == 0  # from the CPU limit
    assert image.database_url.startswith("sqlite:////data/")  # the VOLUME


def test_probes_ask_the_grpc_port_for_health_names_the_server_reports() -> None:
    config = env_file(K8S / "triage.env")
    container = server_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["grpc"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}

    assert ports == {"grpc": int(config["TRIAGE_PORT"]), "metrics": int(config["TRIAGE_METRICS_PORT"])}
    assert {probe["port"] for probe in probes.values()} == {ports["grpc"]}
    for kind in ("startupProbe", "livenessProbe"):
        # A service the server reports, and one that stays SERVING while the database is down:
        # a database outage must not restart every pod.
        assert probes[kind]["service"] in SERVICE_NAMES
        assert probes[kind]["service"] not in AUDITED_HEALTH_NAMES
    # Readiness follows the whole server: out of the Service while audit records cannot be committed.
    assert probes["readinessProbe"].get("service", "") == ""


async def test_the_image_healthcheck_asks_the_server_for_its_health(server: TriageServer) -> None:
    """Docker runs the HEALTHCHECK's shell form with the image's environment: healthy exits 0, else 1."""
    command = next(rest for keyword, rest in dockerfile() if keyword == "HEALTHCHECK").split(" CMD ", 1)[1]
    environment = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    async def exit_status(port: int) -> int:
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", command, env=environment | {"TRIAGE_PORT": str(port)}, stdout=asyncio.subprocess.DEVNULL
        )
        return await process.wait()

    assert await exit_status(server.port) == 0
    with socket.socket() as unused:  # bound, never listening: nothing answers there
        unused.bind(("127.0.0.1", 0))
        assert await exit_status(unused.getsockname()[1]) == 1


def test_every_workload_has_resources_and_runs_unprivileged() -> None:
    user, _, group = next(rest for keyword, rest in dockerfile() if keyword == "USER").partition(":")

    assert user.isdigit()
    assert int(user) > 0
    assert group.isdigit()
    for kind, pod in [*pod_specs(), ("web Deployment", web_pod())]:
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True, kind
        assert security["runAsUser"] == int(user), kind
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for container in pod["spec"]["containers"]:
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, (kind, bound)
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, kind
            assert context["allowPrivilegeEscalation"] is False, kind
            assert context["capabilities"]["drop"] == ["ALL"], kind
            # The root filesystem is read-only: /tmp (port locks, metrics files) must be a volume.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], kind


def test_workers_follow_a_whole_cpu_limit() -> None:
    limit = server_container()["resources"]["limits"]["cpu"]

    assert str(limit).isdigit(), "a fractional limit wastes the part below the next whole CPU (cpu_quota.py)"


def _selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_selectors_and_port_names_meet() -> None:
    resources = k8s()
    deployment = resources["Deployment/triage-server"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = resources["Service/triage-server"]
    monitor = resources["ServiceMonitor/triage-server"]
    policy = resources["NetworkPolicy/triage-server"]["spec"]
    container_ports = {p["name"]: p["containerPort"] for p in server_container()["ports"]}

    assert _selected(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _selected(service["spec"]["selector"], pod_labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(container_ports)
    assert _selected(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert _selected(resources["PodDisruptionBudget/triage-server"]["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = resources["HorizontalPodAutoscaler/triage-server"]["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == ("Deployment", "triage-server")
    assert hpa["minReplicas"] >= 2
    assert resources["PodDisruptionBudget/triage-server"]["spec"]["minAvailable"] >= 1
    # The policy covers the server and the jobs, admits both server ports, and lets the jobs reach PostgreSQL.
    for _kind, pod in pod_specs():
        assert _selected(policy["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    admitted = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert admitted == set(container_ports.values())
    assert 5432 in {port["port"] for rule in policy["egress"] for port in rule["ports"]}


def _cli_commands() -> Iterator[tuple[str, list[str]]]:
    for kind, pod in pod_specs():
        for container in pod["spec"]["containers"]:
            argv = container.get("args") or container["command"]
            if argv[:2] == ["sh", "-c"]:
                argv = shlex.split(argv[2].split("&&")[0])
            yield kind, argv
    for name, service in triage_services().items():
        argv = service["command"]
        if argv[:2] == ["sh", "-c"]:
            argv = shlex.split(argv[2].split("&&")[0])
        yield f"compose {name}", argv


@pytest.mark.parametrize(("where", "argv"), [pytest.param(*v, id=v[0]) for v in _cli_commands()])
def test_commands_are_ones_the_server_cli_takes(where: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def handler(name: str) -> Callable[..., int]:
        def run(*_args: object) -> int:
            ran.append(name)
            return 0

        return run

    for name in ("serve", "migrate_schema", "copy_database"):
        monkeypatch.setattr(cli, name, handler(name))

    assert argv[0] == "triage-server", where
    assert cli.main(argv[1:]) == 0, where
    assert ran, where


def test_compose_runs_two_replicas_behind_nginx_with_their_dependencies() -> None:
    services = compose()
    replicas = services["triage"]

    assert {"postgres", "redis", "nginx", "prometheus", "grafana", "migrate", "triage"} <= set(services)
    assert replicas["deploy"]["replicas"] == 2
    assert replicas["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert set(replicas["deploy"]["resources"]["limits"]) == {"cpus", "memory"}
    for name, service in triage_services().items():
        environment = service["environment"]
        assert environment["TRIAGE_DATABASE_URL"].startswith("postgresql://"), name
        assert environment["TRIAGE_REDIS_URL"].startswith("redis://"), name
        assert service["read_only"] is True, name


def test_nginx_and_prometheus_reach_the_replicas_on_their_ports() -> None:
    image = image_environment()
    replicas = compose()["triage"]["environment"]
    grpc_port = int(replicas.get("TRIAGE_PORT", image["TRIAGE_PORT"]))
    metrics_port = int(replicas.get("TRIAGE_METRICS_PORT", image["TRIAGE_METRICS_PORT"]))
    nginx = (COMPOSE / "nginx.conf").read_text()
    prometheus = load(COMPOSE / "prometheus.yml")

    assert re.findall(r"^\s*server\s+([\w.-]+:\d+)", nginx, re.MULTILINE) == [f"triage:{grpc_port}"]
    assert re.search(r"grpc_pass\s+grpc://triage;", nginx)
    listen = re.search(r"^\s*listen\s+(\d+);", nginx, re.MULTILINE)
    assert listen is not None
    assert compose()["nginx"]["ports"] == [f"127.0.0.1:{listen[1]}:{listen[1]}"]
    assert replicas["TRIAGE_METRICS_HOST"] == "0.0.0.0"  # else nothing outside the container can scrape it
    [job] = prometheus["scrape_configs"]
    assert job["dns_sd_configs"] == [
        {"names": ["triage"], "type": "A", "port": metrics_port, "refresh_interval": "15s"}
    ]


def test_compose_mounts_the_rules_and_the_dashboard_of_deploy() -> None:
    services = compose()
    mounts = {
        name: {(COMPOSE / m.split(":")[0]).resolve(): m.split(":")[1] for m in s.get("volumes", []) if m[0] == "."}
        for name, s in services.items()
    }
    rule_files = load(COMPOSE / "prometheus.yml")["rule_files"]

    assert mounts["prometheus"][RULES] in rule_files
    assert mounts["grafana"][DASHBOARD].startswith("/var/lib/grafana/dashboards/")
    providers = load(COMPOSE / "grafana/provisioning/dashboards/triage.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]


def test_the_kits_deploy_the_version_of_both_packages() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]["version"]
    [image] = load(K8S / "kustomization.yaml")["images"]

    assert client == version  # released together (docs/versioning.md)
    assert image["newTag"] == version
    assert {s["image"] for s in triage_services().values()} == {f"triage-server:{version}"}
    assert f"## [{version}] - " in (ROOT / "CHANGELOG.md").read_text()


def test_both_kits_scrape_under_the_job_the_rules_select() -> None:
    selected = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    [compose_job] = load(COMPOSE / "prometheus.yml")["scrape_configs"]
    [endpoint] = k8s()["ServiceMonitor/triage-server"]["spec"]["endpoints"]
    k8s_job = {r["replacement"] for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"}

    assert selected == {compose_job["job_name"]} == k8s_job


def test_the_prometheus_rule_holds_the_tested_rules() -> None:
    rule = k8s()["PrometheusRule/triage-server"]

    assert rule["spec"]["groups"] == load(RULES)["groups"], "run .venv/bin/python deploy/k8s/prometheusrule.py"
