"""The container and Kubernetes files, checked without a Docker engine or a cluster: they
parse, have the structure the docs promise, and every `chatplane` command they run exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
CHATPLANE_IMAGE = "${CHATPLANE_IMAGE:-chatplane:local}"
DRAIN_TIMEOUT_S = 25


def chatplane_help(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatplane", *command, "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_cli_command_exists(args: list[str]) -> None:
    """`chatplane <command> [<subcommand>] --help` succeeds and knows every --option used."""
    words = [a for a in args if not a.startswith("-")]
    command = words[:2] if words[:1] in (["db"], ["users"], ["keys"], ["ops"]) else words[:1]
    done = chatplane_help(*command)
    assert done.returncode == 0, (args, done.stderr)
    for option in (a for a in args if a.startswith("--")):
        assert option in done.stdout, (option, args)


# Compose.


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_and_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "nginx"} <= set(services)
    for name in ("postgres", "redis", "api", "worker", "nginx"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        grace = int(services[name]["stop_grace_period"].rstrip("s"))
        assert grace >= DRAIN_TIMEOUT_S + 5
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_compose_chatplane_services_use_the_image_and_real_commands(
    compose: dict[str, Any],
) -> None:
    ran = []
    for service in compose["services"].values():
        if service.get("image") != CHATPLANE_IMAGE:
            continue
        assert service["build"]["context"] == "../.."
        env = service["environment"]
        assert env["CHATPLANE_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["CHATPLANE_REDIS_URL"].startswith("redis://")
        ran.append(service["command"])
        assert_cli_command_exists([re.sub(r"\$\{[^}]*\}", "2", a) for a in service["command"]])
    assert ["db", "upgrade"] in ran
    assert ["worker"] in ran
    assert any(command[0] == "backup" for command in ran)


def test_compose_nginx_uses_the_shared_config_and_env_example_covers_it(
    compose: dict[str, Any],
) -> None:
    nginx = compose["services"]["nginx"]
    mounts = [v.split(":")[0] for v in nginx["volumes"]]
    assert "../nginx/chatplane.conf" in mounts
    assert (COMPOSE.parent / "../nginx/chatplane.conf").resolve() == (
        ROOT / "deploy" / "nginx" / "chatplane.conf"
    )
    static = ROOT / "src" / "chatplane" / "web" / "static"
    assert (COMPOSE.parent / "../../src/chatplane/web/static").resolve() == static
    # Every ${VAR:?...} that must be set is in the example env file.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = (COMPOSE.parent / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=", example, re.M), name
    assert "CHATPLANE_SECRET_KEY=" in example


# Dockerfile.


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, [(INSTRUCTION, arguments), ...])], continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else str(len(stages))
            stages.append((name, []))
        elif stages:
            stages[-1][1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_non_root_and_without_compilers() -> None:
    stages = dockerfile_stages()
    assert [name for name, _ in stages] == ["builder", "runtime"]
    builder, final = stages[0][1], stages[-1][1]
    assert any(i == "RUN" and "-c requirements.lock" in a for i, a in builder)
    final_text = " ".join(a for _, a in final)
    for tool in ("build-essential", "gcc", "g++", "make ", "clang"):
        assert tool not in final_text, tool
    users = [a for i, a in final if i == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "HEALTHCHECK" and "/healthz" in a for i, a in final)
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("ENTRYPOINT", '["chatplane"]') in final
    assert ("CMD", '["serve", "--host", "0.0.0.0"]') in final
    assert any(i == "COPY" and "--from=builder" in a for i, a in final)
    assert any("postgresql-client" in a for i, a in final if i == "RUN")  # backup / restore
    ignore = (ROOT / ".dockerignore").read_text()
    assert "**" in ignore.split()


# Kubernetes.


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in k8s_documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_every_manifest_is_listed_and_well_formed() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for filename, document in k8s_documents():
        if filename == "kustomization.yaml":
            continue
        assert document["apiVersion"], filename
        assert document["kind"], filename
        assert document["metadata"]["name"], filename


# Kinds whose schema is not Kubernetes' own: kustomize's file and KEDA's custom resources.
NOT_CORE = frozenset({"Kustomization", "ScaledObject", "TriggerAuthentication"})
KUBERNETES_VERSION = "1.30.0"  # the oldest minor version the manifests promise to run on


def test_every_manifest_matches_the_kubernetes_schema() -> None:
    """Strict: an unknown or misspelled field fails, not only a missing one."""
    checked = 0
    for filename, document in k8s_documents():
        if document["kind"] in NOT_CORE:
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{filename}: {exc.message} at {list(exc.path)}") from exc
        checked += 1
    assert checked >= 10


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_api_deployment_probes_and_drain() -> None:
    api = by_kind("Deployment", "chatplane-api")
    spec = api["spec"]["template"]["spec"]
    main = container(api)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # preStop, then the drain, then uvicorn's 3 s, with a margin.
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + DRAIN_TIMEOUT_S + 3 + 5
    assert main["resources"]["requests"]["cpu"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert_cli_command_exists(main["args"])
    config = by_kind("ConfigMap")["data"]
    assert int(config["CHATPLANE_DRAIN_TIMEOUT_S"]) == DRAIN_TIMEOUT_S


def test_worker_deployment_scaling_and_jobs() -> None:
    worker = by_kind("Deployment", "chatplane-worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= (
        DRAIN_TIMEOUT_S + 5
    )
    assert_cli_command_exists(container(worker)["args"])
    for name in ("chatplane-api", "chatplane-worker"):
        assert by_kind("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "chatplane-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    scaled = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "chatplane-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    # The names the Redis broker uses (prefix from the ConfigMap).
    from chatplane.broker import redis as broker

    prefix = by_kind("ConfigMap")["data"]["CHATPLANE_REDIS_PREFIX"]
    assert trigger["metadata"]["stream"] == f"{prefix}:{{jobs}}:queue"
    assert trigger["metadata"]["consumerGroup"] == broker._GROUP

    migrate = by_kind("Job", "chatplane-migrate")
    assert_cli_command_exists(migrate["spec"]["template"]["spec"]["containers"][0]["args"])
    cron = by_kind("CronJob")
    backup_args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert backup_args[0] == "backup"
    assert_cli_command_exists(backup_args)


def test_ingress_streams_unbuffered() -> None:
    ingress = by_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    # WebSockets (/api/ws) stay open in both directions far longer than the app's pings.
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    assert annotations["nginx.ingress.kubernetes.io/proxy-http-version"] == "1.1"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == by_kind("Service")["metadata"]["name"]
