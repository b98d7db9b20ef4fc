"""Projects API contract without a worker: validation, conflicts, env vars, config, volumes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from projects.testing import commit_version


def _project(client: Any, org: Any, repo: Path, **extra: Any) -> dict[str, Any]:
    body = {"name": "Demo", "slug": f"demo-{uuid.uuid4().hex[:6]}", "git_repository": str(repo)}
    body.update(extra)
    response = client.post("/v1/projects", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create_validation_conflicts_and_crud(
    client: Any, org: Any, other_org: Any, projects_backend: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    project = _project(client, org, repo)
    assert [e["name"] for e in project["environments"]] == ["production"]

    # slug unique per organisation (409), but another organisation may use it
    dup = {"name": "x", "slug": project["slug"], "git_repository": str(repo)}
    response = client.post("/v1/projects", json=dup, headers=org.headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    assert client.post("/v1/projects", json=dup, headers=other_org.headers).status_code == 201

    # exactly one of git_repository / docker_image
    both = {"name": "x", "slug": "both", "git_repository": str(repo), "docker_image": "nginx"}
    response = client.post("/v1/projects", json=both, headers=org.headers)
    assert response.status_code == 422, response.text
    neither = {"name": "x", "slug": "neither"}
    assert client.post("/v1/projects", json=neither, headers=org.headers).status_code == 422

    # image / dockerfile / nixpacks on the local backend: 422 naming the kubernetes backend
    for extra in (
        {"docker_image": "nginx:1"},
        {"git_repository": str(repo), "build_pack": "dockerfile"},
        {"git_repository": str(repo), "build_pack": "nixpacks"},
    ):
        response = client.post(
            "/v1/projects", json={"name": "x", "slug": "img", **extra}, headers=org.headers
        )
        assert response.status_code == 422, response.text
        assert "kubernetes" in response.json()["error"]["message"]

    pid = project["id"]
    # other organisations do not see it
    assert client.get(f"/v1/projects/{pid}", headers=other_org.headers).status_code == 404
    response = client.patch(f"/v1/projects/{pid}", json={"name": "Renamed"}, headers=org.headers)
    assert response.status_code == 200 and response.json()["name"] == "Renamed"
    listed = client.get("/v1/projects", headers=org.headers).json()
    assert pid in [p["id"] for p in listed["data"]]

    # environments
    response = client.post(
        f"/v1/projects/{pid}/environments",
        json={"name": "staging", "replicas": 2},
        headers=org.headers,
    )
    assert response.status_code == 201, response.text
    env = response.json()
    again = client.post(
        f"/v1/projects/{pid}/environments", json={"name": "staging"}, headers=org.headers
    )
    assert again.status_code == 409
    response = client.patch(
        f"/v1/projects/{pid}/environments/{env['id']}", json={"replicas": 1}, headers=org.headers
    )
    assert response.json()["replicas"] == 1
    envs = client.get(f"/v1/projects/{pid}/environments", headers=org.headers).json()["data"]
    assert {e["name"] for e in envs} == {"production", "staging"}

    # env vars: key regex, value cap, secret masked, per environment
    bad = client.post(
        f"/v1/projects/{pid}/env-vars",
        json={"vars": [{"key": "lower", "value": "x"}]},
        headers=org.headers,
    )
    assert bad.status_code == 422
    big = client.post(
        f"/v1/projects/{pid}/env-vars",
        json={"vars": [{"key": "BIG", "value": "x" * 40000}]},
        headers=org.headers,
    )
    assert big.status_code == 422
    response = client.post(
        f"/v1/projects/{pid}/env-vars",
        json={
            "vars": [
                {"key": "GREETING", "value": "hi"},
                {"key": "API_TOKEN", "value": "s3cr3t-value", "secret": True},
            ]
        },
        headers=org.headers,
    )
    assert response.status_code == 200, response.text
    listed_vars = client.get(f"/v1/projects/{pid}/env-vars", headers=org.headers).json()["data"]
    assert {v["key"]: v["value"] for v in listed_vars} == {"API_TOKEN": "***", "GREETING": "hi"}
    staging_vars = client.get(
        f"/v1/projects/{pid}/env-vars?environment=staging", headers=org.headers
    ).json()["data"]
    assert staging_vars == []
    assert (
        client.delete(f"/v1/projects/{pid}/env-vars/GREETING", headers=org.headers).status_code
        == 204
    )
    assert (
        client.delete(f"/v1/projects/{pid}/env-vars/GREETING", headers=org.headers).status_code
        == 404
    )

    # config (not env vars)
    client.post(
        f"/v1/projects/{pid}/config",
        json={"entries": [{"key": "a", "value": "1"}]},
        headers=org.headers,
    )
    assert (
        client.put(
            f"/v1/projects/{pid}/config/b", json={"value": "2"}, headers=org.headers
        ).status_code
        == 200
    )
    config = client.get(f"/v1/projects/{pid}/config", headers=org.headers).json()["data"]
    assert config == [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    assert client.delete(f"/v1/projects/{pid}/config/a", headers=org.headers).status_code == 204
    assert client.get(f"/v1/projects/{pid}/config/a", headers=org.headers).status_code == 404

    # volumes
    vol = client.post(
        f"/v1/projects/{pid}/volumes",
        json={"name": "data", "mount_path": "/data"},
        headers=org.headers,
    )
    assert vol.status_code == 201
    assert (
        client.post(
            f"/v1/projects/{pid}/volumes",
            json={"name": "data", "mount_path": "/d"},
            headers=org.headers,
        ).status_code
        == 409
    )

    vols = client.get(f"/v1/projects/{pid}/volumes", headers=org.headers).json()["data"]
    assert [(v["name"], v["mount_path"], v["size_gb"]) for v in vols] == [("data", "/data", 1)]
    assert (
        client.delete(
            f"/v1/projects/{pid}/volumes/{vols[0]['id']}", headers=org.headers
        ).status_code
        == 204
    )
    assert client.get(f"/v1/projects/{pid}/volumes", headers=org.headers).json()["data"] == []
    assert (
        client.delete(
            f"/v1/projects/{pid}/volumes/{vols[0]['id']}", headers=org.headers
        ).status_code
        == 404
    )

    # a rollback to a deployment that does not exist; a deploy of an unknown environment
    assert (
        client.post(
            f"/v1/projects/{pid}/rollback", json={"deployment_id": "pdep_x"}, headers=org.headers
        ).status_code
        == 404
    )
    assert (
        client.post(
            f"/v1/projects/{pid}/deploy", json={"environment": "nope"}, headers=org.headers
        ).status_code
        == 404
    )


def test_a_deployment_follows_its_job_and_concurrent_deploys(
    client: Any, org: Any, projects_backend: Any, tmp_path: Path
) -> None:
    """A deploy whose job ends without its handler (the sweeper failed it, it was cancelled
    while queued) is never left `queued`; a second deploy is refused 409 unless it waits."""
    from store import jobs as job_store
    from store.db import session_scope
    from store.jobs import JobStatus

    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    pid = _project(client, org, repo)["id"]
    first = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers).json()
    assert first["status"] == "queued"
    refused = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    waiting = client.post(f"/v1/projects/{pid}/deploy", json={"wait": True}, headers=org.headers)
    assert waiting.status_code == 202, waiting.text

    job_id = first["links"]["job"].rsplit("/", 1)[-1]
    with session_scope() as session:  # what the sweeper does to a job whose worker vanished
        assert job_store.transition(
            session,
            job_id,
            to=JobStatus.FAILED,
            from_=[JobStatus.QUEUED, JobStatus.RUNNING],
            error={"code": "worker_lost", "message": "lost"},
        )
    dep = client.get(
        f"/v1/projects/{pid}/deployments/{first['deployment_id']}", headers=org.headers
    ).json()
    assert dep["status"] == "failed" and job_id in dep["status_reason"]

    cancelled = client.post(
        f"/v1/projects/{pid}/deployments/{waiting.json()['deployment_id']}/cancel",
        headers=org.headers,
    ).json()
    assert cancelled["status"] == "cancelled"
    job = client.get(waiting.json()["links"]["job"], headers=org.headers).json()
    assert job["status"] == "cancelled"
    # nothing active any more: a new deploy is accepted (cancelled here: no worker runs it)
    last = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers)
    assert last.status_code == 202
    client.post(
        f"/v1/projects/{pid}/deployments/{last.json()['deployment_id']}/cancel", headers=org.headers
    )


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_services_tcp_proxy_permanence_logs_cap_secrets_at_rest_and_delete(
    client: Any, org: Any, projects_backend: Any, tmp_path: Path
) -> None:
    """Services are declared and changed; a TCP proxy disabled without ``?permanent=true``
    keeps its external port (no other service may take it; re-enabling gets it back) and
    ``permanent`` frees it; the log tail is capped at 1000; env var values are encrypted in
    the database; a repeated DELETE of a project answers the same job."""
    from sqlalchemy import select

    from projects.models import ProjectEnvVar
    from store.db import session_scope

    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    pid = _project(client, org, repo)["id"]
    other = _project(client, org, repo)["id"]

    # ---- services: POST, GET, PATCH (409 on a duplicate, 404 on an unknown one)
    body = {"name": "db", "command": "python db.py", "port": 5432}
    created = client.post(f"/v1/projects/{pid}/services", json=body, headers=org.headers)
    assert created.status_code == 201, created.text
    svc = created.json()
    assert svc["name"] == "db" and svc["port"] == 5432 and svc["id"].startswith("svc_")
    dup = client.post(f"/v1/projects/{pid}/services", json=body, headers=org.headers)
    assert dup.status_code == 409
    patched = client.patch(
        f"/v1/projects/{pid}/services/db", json={"replicas": 2}, headers=org.headers
    ).json()
    assert patched["replicas"] == 2 and patched["command"] == "python db.py"
    got = client.get(f"/v1/projects/{pid}/services/db", headers=org.headers).json()
    assert got == patched
    assert client.get(f"/v1/projects/{pid}/services/nope", headers=org.headers).status_code == 404
    other_svc = client.post(
        f"/v1/projects/{other}/services", json={"name": "db", "port": 5432}, headers=org.headers
    ).json()

    # ---- TCP proxy: a real listener; disabling keeps the port, permanent frees it
    base = f"/v1/services/{svc['id']}/tcp-proxy"
    proxy = client.post(base, json={"target_port": 5432}, headers=org.headers)
    assert proxy.status_code == 201, proxy.text
    port = proxy.json()["external_port"]
    assert proxy.json()["enabled"] is True and _listening(port)
    allow = client.post(
        f"{base}/allowlist", json={"cidr": "10.1.2.3", "description": "office"}, headers=org.headers
    )
    assert allow.status_code == 201
    assert allow.json()["data"] == [{"cidr": "10.1.2.3/32", "description": "office"}]
    bad = client.post(f"{base}/allowlist", json={"cidr": "not-a-cidr"}, headers=org.headers)
    assert bad.status_code == 422

    assert client.delete(base, headers=org.headers).status_code == 204
    kept = client.get(base, headers=org.headers).json()
    assert kept["enabled"] is False and kept["external_port"] == port
    assert kept["allowlist"] == [{"cidr": "10.1.2.3/32", "description": "office"}]
    assert not _listening(port)
    taken = client.post(
        f"/v1/services/{other_svc['id']}/tcp-proxy",
        json={"external_port": port},
        headers=org.headers,
    )
    assert taken.status_code == 409, taken.text  # the disabled proxy still holds its port
    again = client.post(base, json={}, headers=org.headers)
    assert again.status_code == 201
    assert again.json()["external_port"] == port and again.json()["enabled"] is True
    assert _listening(port)
    assert (
        client.delete(
            f"{base}/allowlist", params={"cidr": "10.1.2.3/32"}, headers=org.headers
        ).status_code
        == 204
    )
    assert client.get(f"{base}/allowlist", headers=org.headers).json()["data"] == []

    assert client.delete(f"{base}?permanent=true", headers=org.headers).status_code == 204
    assert client.get(base, headers=org.headers).status_code == 404
    assert not _listening(port)
    freed = client.post(
        f"/v1/services/{other_svc['id']}/tcp-proxy",
        json={"external_port": port},
        headers=org.headers,
    )
    assert freed.status_code == 201, freed.text  # the port is free for anyone now
    client.delete(f"/v1/services/{other_svc['id']}/tcp-proxy?permanent=true", headers=org.headers)

    # ---- logs: the tail is capped at 1000 lines
    assert client.get(f"/v1/projects/{pid}/logs?tail=1001", headers=org.headers).status_code == 422
    assert client.get(f"/v1/projects/{pid}/logs?tail=1000", headers=org.headers).status_code == 200

    # ---- env var values are encrypted at rest, secret or not
    client.post(
        f"/v1/projects/{pid}/env-vars",
        json={
            "vars": [
                {"key": "PLAIN_VALUE", "value": "visible-but-encrypted"},
                {"key": "API_TOKEN", "value": "t0p-s3cret-value", "secret": True},
            ]
        },
        headers=org.headers,
    )
    with session_scope() as session:
        stored = [
            row.value_encrypted
            for row in session.scalars(
                select(ProjectEnvVar).where(ProjectEnvVar.org_id == org.org_id)
            )
        ]
    assert len(stored) == 2
    assert not [v for v in stored if "visible-but-encrypted" in v or "t0p-s3cret-value" in v]

    # ---- delete: 202 with a job, and the same job again (idempotent); the project is gone
    first = client.delete(f"/v1/projects/{pid}", headers=org.headers)
    assert first.status_code == 202, first.text
    second = client.delete(f"/v1/projects/{pid}", headers=org.headers)
    # while the deletion runs: the same job; once it finished (the test worker is quick), the
    # project is gone and a repeat answers 404 like any missing project (DELETE is idempotent)
    assert second.status_code in (202, 404), second.text
    if second.status_code == 202:
        assert second.json()["job_id"] == first.json()["job_id"]
    assert client.get(f"/v1/projects/{pid}", headers=org.headers).status_code == 404
