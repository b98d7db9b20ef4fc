"""Storage and bindings: a blob resource made by the project reaches the app as BLOB_* variables
on the next deploy; a rotation makes the binding stale until the next deploy carries it;
removing the binding removes the variables."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from projects.testing import commit_version
from tests.helpers import wait_for_job
from tests.resources.conftest import api_env, moto_s3_open  # noqa: F401 - fixtures (moto's S3)


def _wait_resource(client: Any, org: Any, rid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        res = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
        if res["status"] in ("ready", "failed"):
            return dict(res)
        time.sleep(0.2)
    raise AssertionError(f"resource {rid} not ready")


def _deploy(client: Any, org: Any, pid: str) -> dict[str, Any]:
    accepted = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers).json()
    wait_for_job(client, accepted["links"]["job"].rsplit("/", 1)[-1], org.headers, timeout=90)
    return dict(
        client.get(
            f"/v1/projects/{pid}/deployments/{accepted['deployment_id']}", headers=org.headers
        ).json()
    )


@pytest.mark.usefixtures("api_env")
def test_storage_binding_rotation_and_unbinding(
    client: Any, org: Any, worker: Any, projects_backend: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    slug = f"st-{uuid.uuid4().hex[:6]}"
    project = client.post(
        "/v1/projects",
        json={
            "name": "S",
            "slug": slug,
            "git_repository": str(repo),
            "git_branch": "main",
            "health_check_path": "/health",
        },
        headers=org.headers,
    ).json()
    pid = project["id"]
    env_id = project["environments"][0]["id"]
    provisioned = client.post(
        f"/v1/projects/{pid}/environments/{env_id}/provision", headers=org.headers
    )
    assert provisioned.status_code == 202, provisioned.text
    wait_for_job(client, provisioned.json()["job_id"], org.headers, timeout=30)
    env_view = client.get(f"/v1/projects/{pid}/environments/{env_id}", headers=org.headers).json()
    assert env_view["status"] == "ready"
    response = client.post(
        f"/v1/projects/{pid}/storage", json={"name": "files"}, headers=org.headers
    )
    assert response.status_code == 202, response.text
    storage = response.json()
    rid = storage["resource_id"]
    assert _wait_resource(client, org, rid)["status"] == "ready"
    listed = client.get(f"/v1/projects/{pid}/storage", headers=org.headers).json()["data"]
    assert [s["name"] for s in listed] == ["files"]
    assert "BLOB_BUCKET" in listed[0]["env_names"]

    assert _deploy(client, org, pid)["status"] == "succeeded"
    app = f"/apps/{slug}/production"
    bucket = client.get(f"{app}/env/BLOB_BUCKET").json()["value"]
    key_id = client.get(f"{app}/env/BLOB_ACCESS_KEY_ID").json()["value"]
    assert bucket and key_id
    # the secret is masked in logs like an env-var secret
    secret = client.get(f"{app}/env/BLOB_SECRET_ACCESS_KEY").json()["value"]
    assert secret
    bindings = client.get(f"/v1/resources/{rid}/bindings", headers=org.headers).json()["data"]
    assert bindings[0]["project_environment_id"] == env_id and bindings[0]["stale"] is False

    # rotation: stale until the next deploy carries the new credentials
    rotated = client.post(f"/v1/resources/{rid}/credentials/rotate", headers=org.headers)
    assert rotated.status_code in (200, 202), rotated.text
    if rotated.status_code == 202 and rotated.json().get("job_id"):
        wait_for_job(client, rotated.json()["job_id"], org.headers, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        bindings = client.get(f"/v1/resources/{rid}/bindings", headers=org.headers).json()["data"]
        if bindings[0]["stale"]:
            break
        time.sleep(0.2)
    assert bindings[0]["stale"] is True
    assert client.get(f"{app}/env/BLOB_SECRET_ACCESS_KEY").json()["value"] == secret  # untouched
    # the Procfile's process types became services; a per-environment override of the web
    # service's replicas applies on the same next deploy
    services = client.get(f"/v1/projects/{pid}/services", headers=org.headers).json()["data"]
    assert {s["name"] for s in services} == {"web", "worker"}
    web = next(s for s in services if s["name"] == "web")
    assert web["port"] == 8000
    override = client.patch(
        f"/v1/projects/{pid}/services/web/environments/{env_id}",
        json={"replicas": 2},
        headers=org.headers,
    )
    assert override.status_code == 200, override.text
    assert _deploy(client, org, pid)["status"] == "succeeded"
    assert client.get(f"{app}/env/BLOB_SECRET_ACCESS_KEY").json()["value"] != secret
    status = client.get(f"/v1/projects/{pid}/status", headers=org.headers).json()
    web_status = next(s for s in status["services"] if s["name"] == "web")
    assert web_status == {"name": "web", "ready": 2, "desired": 2}
    pids = {client.get(f"{app}/").json()["pid"] for _ in range(6)}
    assert len(pids) == 2  # the router spreads requests over both replicas
    latest = client.get(f"/v1/services/{web['id']}/latest-image", headers=org.headers).json()
    assert latest["git_commit"] and latest["kind"] == "venv"
    bindings = client.get(f"/v1/resources/{rid}/bindings", headers=org.headers).json()["data"]
    assert bindings[0]["stale"] is False

    # a binding to a project environment of another kind of call: 409 on a duplicate
    dup = client.post(
        f"/v1/resources/{rid}/bindings",
        json={"project_environment_id": env_id, "role": "readwrite"},
        headers=org.headers,
    )
    assert dup.status_code == 409
    # unbinding: the variables leave the next deploy
    assert (
        client.delete(
            f"/v1/resources/{rid}/bindings/{bindings[0]['id']}", headers=org.headers
        ).status_code
        == 204
    )
    assert _deploy(client, org, pid)["status"] == "succeeded"
    assert client.get(f"{app}/env/BLOB_BUCKET").json()["value"] is None
    rebound = client.post(
        f"/v1/resources/{rid}/bindings",
        json={"project_environment_id": env_id},
        headers=org.headers,
    )
    assert rebound.status_code == 201 and rebound.json()["applied"] is False

    # deleting a storage deletes its blob resource (and its binding)
    made = client.post(
        f"/v1/projects/{pid}/storage", json={"name": "scratch"}, headers=org.headers
    ).json()
    assert _wait_resource(client, org, made["resource_id"])["status"] == "ready"
    names = [
        s["name"]
        for s in client.get(f"/v1/projects/{pid}/storage", headers=org.headers).json()["data"]
    ]
    assert names == ["scratch"]
    gone = client.delete(
        f"/v1/projects/{pid}/storage/scratch?environment=production", headers=org.headers
    )
    assert gone.status_code == 204, gone.text
    assert client.get(f"/v1/projects/{pid}/storage", headers=org.headers).json()["data"] == []
    res = client.get(f"/v1/resources/{made['resource_id']}", headers=org.headers)
    assert res.status_code == 404 or res.json()["status"] in ("deleting", "deleted"), res.text
    again = client.delete(
        f"/v1/projects/{pid}/storage/scratch?environment=production", headers=org.headers
    )
    assert again.status_code == 404
