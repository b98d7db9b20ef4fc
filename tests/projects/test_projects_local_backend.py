"""The local backend alone: processes survive a backend restart (pids verified), ports never
collide between environments, a rollback reuses the artifact, teardown leaves nothing; a rollout
and a rollback under steady load through the router fail no request; a crashed replica restarts
with a growing backoff."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

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


def _release(backend: LocalProjectsBackend, env: EnvironmentRef, repo: Path, dep: str) -> Any:
    artifact = backend.build(
        BuildSpec(deployment_id=dep, env=env, source=SourceSpec(git_repository=str(repo))),
        lambda line: None,
    )
    return ReleaseSpec(
        deployment_id=dep,
        env=env,
        artifact=artifact,
        services=service_specs(artifact, 2, 8000, {}),
        health_check_path="/health",
    )


SECRET = "s3cret-value-in-state"


def _deploy(backend: LocalProjectsBackend, env: EnvironmentRef, repo: Path, dep: str) -> Any:
    release = _release(backend, env, repo, dep).model_copy(
        update={"env_vars": {"API_TOKEN": SECRET}, "secret_keys": ["API_TOKEN"]}
    )
    return release.artifact, backend.rollout(release, None, timeout_s=20)


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
    # the replicas' variables are encrypted in the state file (the secret is not on disk)
    for state in (rt / "envs").glob("*/state.json"):
        assert SECRET not in state.read_text()

    # a new backend instance (an API or worker restart) sees the same live processes
    again = LocalProjectsBackend(runtime.local_config(get_settings()))
    seen = again.status(a, None)
    assert seen.status == "running" and seen.ready_replicas == 3 and not seen.crashes
    reloaded = again._load(a)  # decrypted again for a replica's restart
    assert all(r.env.get("API_TOKEN") == SECRET for r in reloaded.replicas)
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


class _Load:
    """Steady GET requests (4 at a time) through Conveyor's router (the ``AppRouter`` ASGI
    middleware, as the API mounts it) until stopped; every answer recorded."""

    def __init__(self, slug: str) -> None:
        self.path = f"/apps/{slug}/production/"
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, client: Any) -> None:
        while not self._stop.is_set():
            try:
                response = await client.get(self.path)
                version = response.json().get("version", "") if response.status_code == 200 else ""
                self.answers.append((response.status_code, version or response.text[:200]))
            except Exception as exc:  # a connection error counts as a failed request
                self.answers.append((0, repr(exc)))

    async def _run(self) -> None:
        import httpx

        from api.routers.projects import AppRouter
        from deployments.proxy import close_sessions

        async def api(scope: Any, receive: Any, send: Any) -> None:  # what is not app traffic
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        transport = httpx.ASGITransport(app=AppRouter(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await asyncio.gather(*(self._one(client) for _ in range(4)))
        await close_sessions()  # the router's client session of this event loop

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def versions(self) -> list[str]:
        return [v for status, v in self.answers if status == 200]


def test_rollout_and_rollback_under_load_fail_no_request(
    projects_backend: Any, tmp_path: Path
) -> None:
    """No downtime: while a new commit rolls out and the first release is rolled back to,
    every request through the router answers 200 (none refused, none 5xx), from v1, then v2,
    then v1 again."""
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    env = _env("steady")
    first = _release(projects_backend, env, repo, "z1")
    assert projects_backend.rollout(first, None, timeout_s=20).status == "running"
    commit_version(repo, "v2")
    second = _release(projects_backend, env, repo, "z2")
    with _Load("steady") as load:
        deadline = time.monotonic() + 10
        while len(load.answers) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert projects_backend.rollout(second, None, timeout_s=20).status == "running"
        settled = len(load.answers)
        while len(load.answers) < settled + 20 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        replay = first.model_copy(update={"deployment_id": "z3", "rollback_of": "z1"})
        assert projects_backend.rollback(replay, None, timeout_s=20).status == "running"
        settled = len(load.answers)
        while len(load.answers) < settled + 20 and time.monotonic() < deadline + 20:
            time.sleep(0.05)
    failed = [a for a in load.answers if a[0] != 200]
    assert not failed, failed[:5]
    versions = load.versions()
    assert len(versions) >= 60
    changes = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
    assert changes[0] == "v1" and "v2" in changes and changes[-1] == "v1", changes


def test_a_crashed_replica_restarts_with_a_growing_backoff(
    projects_backend: Any, tmp_path: Path
) -> None:
    """A killed replica is seen crashed (the environment degraded, from the processes, not the
    rows), restarted only after its backoff, and the backoff doubles with each crash."""
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    env = _env("crashy")
    _, obs = _deploy(projects_backend, env, repo, "c1")
    assert obs.status == "running" and obs.ready_replicas == 3
    base = projects_backend.config.backoff_base_s
    state_path = projects_backend.config.runtime_dir / "envs" / "crashy-production" / "state.json"

    def web0() -> dict[str, Any]:
        replicas = json.loads(state_path.read_text())["replicas"]
        return dict(next(r for r in replicas if r["service"] == "web" and r["index"] == 0))

    for crash in (1, 2, 3):
        victim = web0()
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        seen = projects_backend.status(env, None)
        while not seen.crashes and time.monotonic() < deadline:
            time.sleep(0.02)
            seen = projects_backend.status(env, None)
        killed_at = time.time()
        assert [c.replica for c in seen.crashes] == [victim["id"]]
        assert seen.status == "degraded" and seen.ready_replicas == 2
        record = web0()
        delay = base * 2 ** (crash - 1)
        assert record["crashes"] == crash and record["status"] == "crashed"
        assert record["next_restart_at"] - killed_at == pytest.approx(delay, abs=0.15)
        # not restarted before the backoff is over ...
        assert projects_backend.status(env, None).events == []
        assert web0()["pid"] == victim["pid"]
        # ... and restarted (then ready again) after it
        while time.time() < record["next_restart_at"]:
            time.sleep(0.02)
        while time.monotonic() < deadline:
            seen = projects_backend.status(env, None)
            if seen.ready_replicas == 3:
                break
            time.sleep(0.05)
        restarted = web0()
        assert seen.status == "running" and restarted["pid"] != victim["pid"]
        assert restarted["restarts"] == crash and _alive(restarted["pid"])
