"""End to end on the local backend: a real sample app repository, real processes, a real Celery
worker, the router in front. Create, env vars (one secret), deploy, call through the router,
redeploy a new commit, a concurrent deploy refused, roll back (first commit and env back), a
failed health check leaves the old release serving, a killed replica restarts (``project.crashed``),
volume data survives, logs (NDJSON and SSE) with the secret masked, TCP proxy allow-list, a deploy
after the rollback keeps the current env vars, delete (no process, port, route, volume or env var
left)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from projects.testing import commit_version
from tests.helpers import wait_for_job

SECRET = "sup3r-s3cret-t0ken"


def _deploy(client: Any, org: Any, pid: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/projects/{pid}/deploy", json=body, headers=org.headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _finish(client: Any, org: Any, pid: str, accepted: dict[str, Any]) -> dict[str, Any]:
    job_id = accepted["links"]["job"].rsplit("/", 1)[-1]
    wait_for_job(client, job_id, org.headers, timeout=90)
    dep = client.get(
        f"/v1/projects/{pid}/deployments/{accepted['deployment_id']}", headers=org.headers
    ).json()
    return dict(dep)


def _app(client: Any, slug: str, path: str = "/", **kw: Any) -> Any:
    return client.get(f"/apps/{slug}/production{path}", **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _tcp_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data
        except (ConnectionResetError, BrokenPipeError):
            return b""


def test_project_lifecycle_on_the_local_backend(
    client: Any,
    org: Any,
    worker: Any,
    projects_backend: Any,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    from config import get_settings
    from store.db import session_scope
    from webhooks.schemas import WebhookCreate
    from webhooks.service import create_endpoint

    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1:9", raising=False)
    with session_scope() as session:
        hook, _ = create_endpoint(
            session,
            org.org_id,
            WebhookCreate(
                url="http://127.0.0.1:9/hook",
                events=[
                    "project.crashed",
                    "project.deploy.started",
                    "project.deploy.succeeded",
                    "project.rollback.succeeded",
                    "project.deploy.failed",
                ],
            ),
        )
        hook_id = hook.id

    repo = tmp_path / "repo"
    c1 = commit_version(repo, "v1")
    slug = f"demo-{uuid.uuid4().hex[:6]}"
    domain = f"{slug}.apps.test"
    project = client.post(
        "/v1/projects",
        json={
            "name": "Demo",
            "slug": slug,
            "git_repository": f"file://{repo}",
            "git_branch": "main",
            "health_check_path": "/health",
            "domain": domain,
        },
        headers=org.headers,
    ).json()
    pid = project["id"]
    client.post(
        f"/v1/projects/{pid}/volumes",
        json={"name": "data", "mount_path": "/data"},
        headers=org.headers,
    )
    client.post(
        f"/v1/projects/{pid}/env-vars",
        json={
            "vars": [
                {"key": "GREETING", "value": "hello"},
                {"key": "API_TOKEN", "value": SECRET, "secret": True},
            ]
        },
        headers=org.headers,
    )

    # ---- first deploy
    accepted = _deploy(client, org, pid, environment="production")
    assert accepted["status"] == "queued" and accepted["environment"] == "production"
    assert set(accepted["links"]) >= {"job", "logs"}
    dep1 = _finish(client, org, pid, accepted)
    assert dep1["status"] == "succeeded", dep1
    assert dep1["git_commit"] == c1 and dep1["artifact"]["kind"] == "venv"
    answer = _app(client, slug).json()
    assert answer["version"] == "v1" and answer["greeting"] == "hello"
    by_host = client.get("/", headers={"Host": domain}).json()
    assert by_host["version"] == "v1"
    assert _app(client, slug, "/volume?write=one").json()["data"] == "one\n"
    status = client.get(f"/v1/projects/{pid}/status", headers=org.headers).json()
    assert status["status"] == "running" and status["active_deployment_id"] == dep1["id"]
    assert status["replicas"]["ready"] == status["replicas"]["desired"] == 2  # web + worker

    # ---- an env var change restarts nothing
    first_pid = answer["pid"]
    client.post(
        f"/v1/projects/{pid}/env-vars",
        json={"vars": [{"key": "GREETING", "value": "bonjour"}]},
        headers=org.headers,
    )
    again = _app(client, slug).json()
    assert again["pid"] == first_pid and again["greeting"] == "hello"

    # ---- redeploy a new commit; a second deploy meanwhile is refused (409)
    c2 = commit_version(repo, "v2")
    accepted2 = _deploy(client, org, pid)
    second = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers)
    assert second.status_code == 409, second.text
    queued = _deploy(client, org, pid, wait=True)  # waits for its turn instead
    dep2 = _finish(client, org, pid, accepted2)
    behind = _finish(client, org, pid, queued)
    assert behind["status"] == "succeeded" and behind["artifact"]["reused"] is True
    assert behind["started_at"] >= dep2["finished_at"]  # one after the other, never interleaved
    assert dep2["status"] == "succeeded" and dep2["git_commit"] == c2
    answer = _app(client, slug).json()
    assert answer["version"] == "v2" and answer["greeting"] == "bonjour"
    assert _app(client, slug, "/volume").json()["data"] == "one\n"  # the volume survived
    assert not _alive(first_pid)  # the old replica was drained and stopped

    # ---- a version whose health check never passes: failed, the old one keeps serving
    commit_version(repo, "v3", startup="sys.exit(3)")
    dep3 = _finish(client, org, pid, _deploy(client, org, pid))
    assert dep3["status"] == "failed"
    assert dep3["status_reason"].startswith("health_check_failed")
    assert "web v3 starting" in dep3["status_reason"]  # the last log lines
    assert SECRET not in dep3["status_reason"] and "token=***" in dep3["status_reason"]
    assert _app(client, slug).json()["version"] == "v2"

    # ---- roll back to the first deployment: its commit and its env snapshot
    response = client.post(
        f"/v1/projects/{pid}/rollback", json={"deployment_id": dep1["id"]}, headers=org.headers
    )
    assert response.status_code == 202, response.text
    started = time.monotonic()
    dep4 = _finish(client, org, pid, response.json())
    rollback_s = time.monotonic() - started
    assert dep4["status"] == "succeeded" and dep4["rollback_of"] == dep1["id"]
    assert dep4["git_commit"] == c1 and dep4["triggered_by"] == "rollback"
    assert dep4["artifact"]["git_commit"] == c1
    answer = _app(client, slug).json()
    assert answer["version"] == "v1" and answer["greeting"] == "hello", answer
    assert rollback_s < 10, rollback_s
    history = client.get(
        f"/v1/projects/{pid}/deployments?environment=production", headers=org.headers
    ).json()["data"]
    assert [d["id"] for d in history] == [
        dep4["id"],
        dep3["id"],
        behind["id"],
        dep2["id"],
        dep1["id"],
    ]
    failed = client.get(
        f"/v1/projects/{pid}/deployments?status=failed", headers=org.headers
    ).json()["data"]
    assert [d["id"] for d in failed] == [dep3["id"]]
    # env vars were never lost by all this: the latest values are still there
    env_vars = client.get(f"/v1/projects/{pid}/env-vars", headers=org.headers).json()["data"]
    assert {v["key"]: v["value"] for v in env_vars} == {"API_TOKEN": "***", "GREETING": "bonjour"}

    # ---- logs: NDJSON tail (build + runtime), secret masked; SSE
    text = client.get(f"/v1/projects/{pid}/logs?tail=1000", headers=org.headers).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert SECRET not in text and any("token=***" in ln["msg"] for ln in lines)
    assert {ln["stream"] for ln in lines} == {"build", "runtime"}
    scoped = client.get(
        f"/v1/projects/{pid}/logs?tail=50&deployment_id={dep2['id']}", headers=org.headers
    ).text
    assert "web v2 starting" in scoped and "web v1 starting" not in scoped
    with client.stream(
        "GET", f"/v1/projects/{pid}/logs?tail=5&stream=true&service=web", headers=org.headers
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events: list[dict[str, Any]] = []
        for raw in stream.iter_lines():
            if raw.startswith("data: "):
                events.append(json.loads(raw[6:]))
            if len(events) >= 5:
                break
    assert all(set(e) >= {"ts", "level", "service", "msg"} for e in events)
    assert all(SECRET not in e["msg"] for e in events)

    # ---- kill the web replica: restarted, project.crashed
    victim = _app(client, slug).json()["pid"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    restarted = None
    while time.monotonic() < deadline:
        seen = client.get(f"/v1/projects/{pid}/status", headers=org.headers)  # observes, restarts
        assert seen.status_code == 200, seen.text
        response = _app(client, slug)
        if response.status_code == 200 and response.json()["pid"] != victim:
            restarted = response.json()
            break
        time.sleep(0.2)
    assert restarted is not None, (seen.json(), response.status_code, response.text)
    assert restarted["version"] == "v1"
    deliveries = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=org.headers).json()
    kinds = [d["event_type"] for d in deliveries["data"]]
    assert "project.crashed" in kinds
    assert {
        "project.deploy.started",
        "project.deploy.succeeded",
        "project.rollback.succeeded",
        "project.deploy.failed",
    } <= set(kinds)

    # ---- TCP proxy: empty allow-list refuses all, the allow-list lets 127.0.0.1 in
    services = client.get(f"/v1/projects/{pid}/services", headers=org.headers).json()["data"]
    web = next(s for s in services if s["name"] == "web")
    proxy = client.post(f"/v1/services/{web['id']}/tcp-proxy", json={}, headers=org.headers)
    assert proxy.status_code == 201, proxy.text
    port = proxy.json()["external_port"]
    assert _tcp_get(port) == b""
    client.post(
        f"/v1/services/{web['id']}/tcp-proxy/allowlist",
        json={"cidr": "10.0.0.0/8"},
        headers=org.headers,
    )
    assert _tcp_get(port) == b""
    client.post(
        f"/v1/services/{web['id']}/tcp-proxy/allowlist",
        json={"cidr": "127.0.0.1/32", "description": "me"},
        headers=org.headers,
    )
    assert b'"version": "v1"' in _tcp_get(port)

    # ---- replica-seconds in the usage report
    client.get(f"/v1/projects/{pid}/status", headers=org.headers)
    usage = client.get("/v1/usage", headers=org.headers).json()
    assert usage["replica_seconds"] >= 1, usage

    # ---- a deploy after the rollback runs the env vars as they are now (the rollback's
    # snapshot did not revert them), on the commit asked for
    dep5 = _finish(client, org, pid, _deploy(client, org, pid, git_commit=c2))
    assert dep5["status"] == "succeeded" and dep5["git_commit"] == c2, dep5
    answer = _app(client, slug).json()
    assert answer["version"] == "v2" and answer["greeting"] == "bonjour", answer
    assert _app(client, slug, "/volume").json()["data"] == "one\n"  # still there

    # ---- delete: no process, port, route, volume or env var left
    state = json.loads(
        (
            projects_backend.config.runtime_dir / "envs" / f"{slug}-production" / "state.json"
        ).read_text()
    )
    pids = [r["pid"] for r in state["replicas"] + state["proxies"]]
    ports = [r["port"] for r in state["replicas"]] + [port]
    response = client.delete(f"/v1/projects/{pid}", headers=org.headers)
    assert response.status_code == 202
    wait_for_job(client, response.json()["job_id"], org.headers, timeout=60)
    assert client.get(f"/v1/projects/{pid}", headers=org.headers).status_code == 404
    assert not [p for p in pids if _alive(p)]
    for p in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0
    assert not (projects_backend.config.runtime_dir / "routes" / f"{slug}-production.json").exists()
    assert not (projects_backend.config.runtime_dir / "volumes" / f"{slug}-production").exists()
    assert _app(client, slug).status_code == 503
    from sqlalchemy import func, select

    from projects.models import ProjectEnvVar, ProjectTcpProxy, ProjectVolume

    with session_scope() as session:
        for model in (ProjectEnvVar, ProjectVolume, ProjectTcpProxy):
            left = session.scalar(
                select(func.count()).select_from(model).where(model.org_id == org.org_id)
            )
            assert left == 0, model
