"""``deployment_status`` on an app project's environment, on the local projects backend: real
processes, a real worker. A killed replica leaves the environment ``degraded``: the supervisor's
``project.crashed`` event evaluates the rule (no beat, no explicit call) and it fires; once the
replica is back it resolves. A first deploy whose health check never passes leaves its
environment ``failed``: ``project.deploy.failed`` fires the rule watching it. Every transition
reaches a real receiver as a signed webhook; the environment's replica-seconds are billed as
usage events of the same subject."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from alerts.schemas import CONDITION_TYPES
from projects.testing import commit_version
from tests.alerts.conftest import create_alert, evaluate, subscribe, verified_events, wait_until
from tests.api_contract.receiver import Receiver
from tests.conftest import OrgKey, make_org
from tests.helpers import wait_for_job
from tests.projects.conftest import projects_backend

__all__ = ["projects_backend"]


def _deploy(client: Any, org: OrgKey, pid: str, environment: str) -> dict[str, Any]:
    accepted = client.post(
        f"/v1/projects/{pid}/deploy", json={"environment": environment}, headers=org.headers
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    wait_for_job(client, body["links"]["job"].rsplit("/", 1)[-1], org.headers, timeout=90)
    dep = client.get(f"/v1/projects/{pid}/deployments/{body['deployment_id']}", headers=org.headers)
    return dict(dep.json())


def _environment(client: Any, org: OrgKey, pid: str, name: str) -> dict[str, Any]:
    listed = client.get(f"/v1/projects/{pid}/environments", headers=org.headers).json()["data"]
    (env,) = [e for e in listed if e["name"] == name]
    return dict(env)


def _watch(client: Any, org: OrgKey, env_id: str, statuses: list[str]) -> dict[str, Any]:
    condition = {
        "type": "deployment_status",
        "subject_type": "project_environment",
        "subject_id": env_id,
        "statuses": statuses,
        "for": 0,
    }
    return create_alert(client, org, {"name": f"app {statuses}", "condition": condition})


def _state(client: Any, org: OrgKey, alert_id: str) -> str:
    return str(client.get(f"/v1/alerts/{alert_id}", headers=org.headers).json()["state"])


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_crash_and_a_failed_deploy_fire_project_environment_alerts(
    client: Any,
    org: OrgKey,
    worker: Any,
    receiver: Receiver,
    projects_backend: Any,
    tmp_path: Path,
) -> None:
    from projects.jobs import supervise_all
    from tests.billing.conftest import events_of

    secret = subscribe(client, org, receiver)
    repo = tmp_path / "repo"
    commit_version(repo, "v1")
    slug = f"watched-{uuid.uuid4().hex[:6]}"
    project = client.post(
        "/v1/projects",
        json={
            "name": "Watched",
            "slug": slug,
            "git_repository": f"file://{repo}",
            "git_branch": "main",
            "health_check_path": "/health",
        },
        headers=org.headers,
    )
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    assert _deploy(client, org, pid, "production")["status"] == "succeeded"
    prod = _environment(client, org, pid, "production")
    assert prod["status"] == "running"

    # Another organisation's environment, or none, cannot be watched (422, as for deployments).
    stranger = make_org()
    for who, subject in ((stranger, prod["id"]), (org, "env_missing")):
        condition = {"type": "deployment_status", "subject_type": "project_environment",
                     "subject_id": subject}  # fmt: skip
        r = client.post(
            "/v1/alerts", json={"name": "x", "condition": condition}, headers=who.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["loc"] == ["body", "condition", "subject_id"]

    down = _watch(client, org, prod["id"], ["degraded", "failed"])
    assert evaluate(org)["firing"] == 0  # running: nothing holds

    # ---- a replica killed: the supervisor sees the crash; its event evaluates the rule
    web = client.get(f"/apps/{slug}/production/").json()["pid"]
    os.kill(web, signal.SIGKILL)
    wait_until(lambda: _dead(web), timeout=10)
    assert supervise_all()["crashes"] == 1
    assert _environment(client, org, pid, "production")["status"] == "degraded"
    wait_until(lambda: _state(client, org, down["id"]) == "firing", timeout=30)

    # ---- the replica restarts (backoff) and answers again: resolved on the next evaluation
    def back() -> bool:
        supervise_all()
        return bool(_environment(client, org, pid, "production")["status"] == "running")

    wait_until(back, timeout=30)
    assert evaluate(org)["resolved"] == 1
    assert evaluate(org)["resolved"] == 0  # once
    assert client.get(f"/apps/{slug}/production/").json()["version"] == "v1"

    # ---- a new environment whose first release never passes its health check: failed
    commit_version(repo, "v2", startup="sys.exit(3)")
    created = client.post(
        f"/v1/projects/{pid}/environments", json={"name": "staging"}, headers=org.headers
    )
    assert created.status_code == 201, created.text
    broken = _watch(client, org, created.json()["id"], ["failed"])
    dep = _deploy(client, org, pid, "staging")
    assert dep["status"] == "failed" and dep["status_reason"].startswith("health_check_failed")
    assert _environment(client, org, pid, "staging")["status"] == "failed"
    # No explicit evaluation: project.deploy.failed triggered one through the outbox.
    wait_until(lambda: _state(client, org, broken["id"]) == "firing", timeout=30)

    wait_until(lambda: len(receiver.requests) >= 3)
    time.sleep(0.5)  # and nothing more arrives
    events = verified_events(receiver, secret)
    events.sort(key=lambda e: (e["data"]["created_at"], e["type"] == "alert.resolved"))
    seen = [(e["type"], e["data"]["alert_id"], e["data"]["details"]["status"]) for e in events]
    assert seen == [
        ("alert.firing", down["id"], "degraded"),
        ("alert.resolved", down["id"], "running"),
        ("alert.firing", broken["id"], "failed"),
    ]
    assert events[0]["data"]["details"]["subject_type"] == "project_environment"
    assert {e["data"]["details"]["subject_id"] for e in events} == {
        prod["id"],
        created.json()["id"],
    }
    assert evaluate(org, *CONDITION_TYPES)["firing"] == 0  # still failed: no second firing

    # The running environment's replica-seconds were metered as billing usage of that subject,
    # exactly what its durable counter billed.
    from projects.models import ProjectEnvironment
    from store.db import session_scope

    with session_scope() as session:
        env = session.get(ProjectEnvironment, prod["id"])
        assert env is not None
        billed = env.replica_seconds_billed
    assert billed > 0
    metered = [e for e in events_of(org.org_id) if e.subject_id == prod["id"]]
    assert {(e.meter, e.subject_type, e.dimension) for e in metered} <= {
        ("replica_seconds", "project_environment", "production")
    }
    assert sum(e.quantity for e in metered) == billed
