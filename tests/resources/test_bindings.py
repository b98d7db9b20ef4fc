"""Bindings through the REST API into a local deployment (real replica processes): the
process sees DATABASE_URL and connects with it; a clashing second binding → 409 naming the
variable; env_prefix binds under other names; rotation rolls the deployment onto the new
credentials; unbinding removes the variables from the next revision."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deployments.conftest import install_backend
from tests.helpers import wait_for_job
from tests.resources.apihelpers import BOUND_APP, creds, delete, provision
from tests.resources.conftest import connect_url

pytestmark = pytest.mark.usefixtures("pg_available", "worker")


@pytest.fixture
def bound_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    from config import get_settings
    from deployments import runtime

    settings = get_settings()
    monkeypatch.setattr(settings, "models", f"tiny={tmp_path}/tiny")
    monkeypatch.setattr(settings, "deploy_poll_seconds", 0.1)
    monkeypatch.setattr(settings, "deploy_backend", "local")
    backend = install_backend(
        tmp_path, [sys.executable, BOUND_APP, "--port", "{port}", "--name", "{name}"]
    )
    yield backend
    backend.sweep_orphans(set())
    runtime.reset_backend()


def _deployment(client: Any, dep_id: str, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get(f"/v1/deployments/{dep_id}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_revision(client: Any, dep_id: str, headers: dict[str, str], revision: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = _deployment(client, dep_id, headers)
        if body["revision"] >= revision and body["status"] == "running":
            return
        time.sleep(0.1)
    raise AssertionError(f"deployment not running revision {revision}: {body}")


def _db_check(dep_id: str) -> str:
    """The DB_CHECK line the newest replica printed at start-up."""
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        dep = session.get(Deployment, dep_id)
        assert dep is not None
        replicas = (dep.backend_state or {}).get("data", {}).get("replicas", [])
    newest = max(replicas, key=lambda r: r["revision"])
    text = Path(newest["log_path"]).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("DB_CHECK")]
    assert lines, text[-500:]
    return lines[-1]


def test_bind_conflict_prefix_rotation_unbind(
    client: Any,
    org: Any,
    other_org: Any,
    api_env: Any,
    bound_backend: Any,
) -> None:
    res = provision(client, org, type="postgres", tier="shared")
    url = creds(client, org, res["id"])["env"]["DATABASE_URL"]
    with connect_url(url) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute("INSERT INTO items VALUES (1), (2), (3)")
    r = client.post("/v1/deployments", json={"name": "app-1", "model": "tiny"}, headers=org.headers)
    assert r.status_code == 202, r.text
    dep_id = r.json()["id"]
    _wait_revision(client, dep_id, org.headers, 1)
    assert _db_check(dep_id) == "DB_CHECK missing DATABASE_URL"

    path = f"/v1/deployments/{dep_id}/bindings"
    # Another organisation can neither bind to this deployment nor bind this resource.
    assert (
        client.post(path, json={"resource_id": res["id"]}, headers=other_org.headers).status_code
        == 404
    )
    r = client.post(path, json={"resource_id": res["id"]}, headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.json()["env_names"] == ["DATABASE_URL"]
    _wait_revision(client, dep_id, org.headers, 2)
    role = re.search(r"postgresql://([^:]+):", url)
    assert role is not None
    assert _db_check(dep_id) == f"DB_CHECK ok user={role.group(1)} rows=3"

    clash = client.post(path, json={"resource_id": res["id"]}, headers=org.headers)
    assert clash.status_code == 409, clash.text
    assert "DATABASE_URL" in clash.json()["error"]["message"]
    second = client.post(
        path, json={"resource_id": res["id"], "env_prefix": "REPLICA"}, headers=org.headers
    )
    assert second.status_code == 202, second.text
    assert second.json()["env_names"] == ["REPLICA_DATABASE_URL"]
    listed = client.get(path, headers=org.headers).json()["data"]
    assert len(listed) == 2
    _wait_revision(client, dep_id, org.headers, 3)

    # Rotation rolls the bound deployment onto the new role.
    r = client.post(f"/v1/resources/{res['id']}/credentials/rotate", headers=org.headers)
    wait_for_job(client, r.json()["links"]["job"].rsplit("/", 1)[1], org.headers)
    _wait_revision(client, dep_id, org.headers, 4)
    new_url = creds(client, org, res["id"])["env"]["DATABASE_URL"]
    new_role = re.search(r"postgresql://([^:]+):", new_url)
    assert new_role is not None and new_role.group(1) != role.group(1)
    assert _db_check(dep_id) == f"DB_CHECK ok user={new_role.group(1)} rows=3"

    for binding in listed:
        assert client.delete(f"{path}/{binding['id']}", headers=org.headers).status_code == 204
    _wait_revision(client, dep_id, org.headers, 6)
    assert _db_check(dep_id) == "DB_CHECK missing DATABASE_URL"
    client.delete(f"/v1/deployments/{dep_id}", headers=org.headers)
    delete(client, org, res["id"])
