"""The production shape: docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is parsed (PyYAML, merge keys resolved) and
its structure checked against config/queues.py; where a compose client is installed
(`docker compose` plugin or `docker-compose`), `config -q` validates it against the Compose
spec as well.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.queues import WORKER_GROUPS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

STORE_USERS_CONDITIONS = {
    "redis": "service_healthy",
    "postgres": "service_healthy",
    "migrate": "service_completed_successfully",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _worker_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if _command(s)[:1] == ["worker"]}


def _group_of(service: dict[str, Any]) -> str:
    cmd = _command(service)
    assert "--group" in cmd, cmd
    return cmd[cmd.index("--group") + 1]


def test_every_worker_group_has_a_service(services: dict[str, dict[str, Any]]) -> None:
    workers = _worker_services(services)
    groups = {_group_of(s) for s in workers.values()}
    assert groups == set(WORKER_GROUPS)
    for name, service in workers.items():
        assert _group_of(service) in WORKER_GROUPS, name
    # Every group except inference runs without a profile (docker compose up starts it).
    default_groups = {_group_of(s) for s in workers.values() if not s.get("profiles")}
    assert default_groups == set(WORKER_GROUPS) - {"inference"}


def test_processes_and_commands(services: dict[str, dict[str, Any]]) -> None:
    for name in ("redis", "postgres", "migrate", "api", "beat", "flower"):
        assert name in services, name
    assert _command(services["migrate"]) == ["migrate"]
    assert _command(services["api"]) == ["api"]
    assert _command(services["beat"]) == ["beat"]
    assert _command(services["flower"]) == ["flower"]
    assert services["migrate"].get("restart") == "no"  # a one-shot step


def test_backing_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, probe in (("redis", "redis-cli"), ("postgres", "pg_isready")):
        check = services[name]["healthcheck"]
        test = check["test"]
        joined = " ".join(test) if isinstance(test, list) else test
        assert probe in joined, name
        assert check["interval"] and check["retries"] >= 3
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "/v1/health" in api_check


def test_dependency_conditions(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    store_users = ["api", "beat", *_worker_services(services)]
    for name in store_users:
        deps = services[name]["depends_on"]
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, condition in STORE_USERS_CONDITIONS.items():
            assert deps[dep]["condition"] == condition, (name, dep)
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_production_environment(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ("redis", "postgres", "minio") or "monitoring" in service.get("profiles", []):
            continue
        env = service["environment"]
        assert env["CONVEYOR_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["CONVEYOR_DATABASE_URL"], name
        assert env["CONVEYOR_BROKER_URL"] == "redis://redis:6379/0", name
    assert services["api"]["environment"]["CONVEYOR_API_HOST"] == "0.0.0.0"


def test_blob_resources_have_a_real_s3_server(services: dict[str, dict[str, Any]]) -> None:
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:") and "minio-data:/data" in minio["volumes"]
    assert "ready" in minio["healthcheck"]["test"]
    for name in ("api", "worker-provision", "beat"):
        env = services[name]["environment"]
        assert env["CONVEYOR_RESOURCES_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["CONVEYOR_RESOURCES_S3_USE_IAM"] == "false", name  # MinIO: no AWS IAM API
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy", name


def test_inference_worker_reserves_a_gpu_under_a_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = [
        s
        for s in _worker_services(services).values()
        if _group_of(s) == "inference" and "gpu" in s.get("profiles", [])
    ]
    assert len(gpu) == 1
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # No other service reserves a GPU.
    others = [s for s in services.values() if s is not gpu[0] and "deploy" in s]
    assert not others


def test_flower_basic_auth_from_env(services: dict[str, dict[str, Any]]) -> None:
    env = services["flower"]["environment"]
    assert re.fullmatch(r"\$\{CONVEYOR_FLOWER_USER(:-[^}]*)?\}", env["CONVEYOR_FLOWER_USER"])
    # The password has no default: compose refuses to start without one.
    assert env["CONVEYOR_FLOWER_PASSWORD"].startswith("${CONVEYOR_FLOWER_PASSWORD:?")


def test_flower_command_turns_env_into_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the flower service runs: `conveyor flower` with the env above enables basic auth."""
    from cli.main import flower_command
    from config import get_settings

    monkeypatch.setenv("CONVEYOR_FLOWER_USER", "ops")
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD", "s3cret")
    get_settings.cache_clear()
    try:
        cmd, env = flower_command()
    finally:
        get_settings.cache_clear()
    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret"
    assert "--address=0.0.0.0" in cmd


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    instructions = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert 'pip install ".[inference,deploy,resources]"' in text
    assert re.search(r"apt-get install[^\n]*\\?\n?[^\n]*\bchromium\b", text)
    assert "playwright install" not in instructions
    assert re.search(r'ENTRYPOINT \[.*"conveyor"\]', text)


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_client_validates_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose client installed (docker compose plugin or docker-compose)")
    env = {**os.environ, "CONVEYOR_FLOWER_PASSWORD": "test-password"}
    for profile in ([], ["--profile", "gpu"], ["--profile", "cpu"], ["--profile", "monitoring"]):
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    # Without the Flower password the file refuses to render.
    env.pop("CONVEYOR_FLOWER_PASSWORD")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode != 0
    assert "CONVEYOR_FLOWER_PASSWORD" in result.stderr
