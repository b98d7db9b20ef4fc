"""The local backend alone: processes survive a backend restart (pids verified), ports never
collide between environments, a rollback reuses the artifact, teardown leaves nothing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from projects.backends.base import BuildSpec, EnvironmentRef, ReleaseSpec, SourceSpec
from projects.backends.local import LocalProjectsBackend, service_specs
from projects.testing import commit_version


def _env(slug: str) -> EnvironmentRef:
    return EnvironmentRef(
        org_id="o",
        project_id=f"p-{slug}",
        project_slug=slug,
        environment_id=f"e-{slug}",
        environment="production",
    )


def _deploy(backend: LocalProjectsBackend, env: EnvironmentRef, repo: Path, dep: str) -> Any:
    artifact = backend.build(
        BuildSpec(deployment_id=dep, env=env, source=SourceSpec(git_repository=str(repo))),
        lambda line: None,
    )
    release = ReleaseSpec(
        deployment_id=dep,
        env=env,
        artifact=artifact,
        services=service_specs(artifact, 2, 8000, {}),
        health_check_path="/health",
    )
    return artifact, backend.rollout(release, None, timeout_s=20)


def test_restart_ports_reuse_and_teardown(projects_backend: Any, tmp_path: Path) -> None:
    from config import get_settings
    from projects import runtime

    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    a, b = _env("alpha"), _env("beta")
    art_a, obs_a = _deploy(projects_backend, a, repo, "d1")
    _, obs_b = _deploy(projects_backend, b, repo, "d2")
    assert obs_a.status == obs_b.status == "running" and obs_a.ready_replicas == 3

    rt = projects_backend.config.runtime_dir
    ports = [
        r["port"]
        for s in ("alpha", "beta")
        for r in json.loads((rt / "envs" / f"{s}-production" / "state.json").read_text())[
            "replicas"
        ]
    ]
    assert len(ports) == len(set(ports)) == 6  # no collision across environments

    # a new backend instance (an API or worker restart) sees the same live processes
    again = LocalProjectsBackend(runtime.local_config(get_settings()))
    seen = again.status(a, None)
    assert seen.status == "running" and seen.ready_replicas == 3 and not seen.crashes
    assert seen.active_deployment_id == "d1"

    # the same commit again: the artifact is reused, not rebuilt
    art_again, _ = _deploy(again, a, repo, "d3")
    assert art_again.reused and art_again.venv_path == art_a.venv_path

    pids = [
        r["pid"]
        for r in json.loads((rt / "envs" / "alpha-production" / "state.json").read_text())[
            "replicas"
        ]
    ]
    again.teardown(a, None)
    for pid in pids:
        assert not _alive(pid)
    assert not (rt / "routes" / "alpha-production.json").exists()
    assert again.status(b, None).status == "running"  # the other environment is untouched
    for port in ports[:3]:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"
