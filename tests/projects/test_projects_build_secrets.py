"""Secrets never reach build logs: a build step that prints a secret env var (pip expands
``${API_TOKEN}`` in requirements.txt, as a private index URL would) shows ``***`` in the
deployment's build log, in its failure reason and in ``GET …/logs``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from projects.testing import commit_version
from tests.helpers import wait_for_job

SECRET = "bu1ld-t1me-s3cret"


def test_a_secret_printed_by_the_build_is_masked(
    client: Any, org: Any, worker: Any, projects_backend: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    commit_version(repo, "v1", requirements="--no-index\n${API_TOKEN}\n")
    slug = f"bs-{uuid.uuid4().hex[:6]}"
    project = client.post(
        "/v1/projects",
        json={"name": "B", "slug": slug, "git_repository": str(repo), "git_branch": "main"},
        headers=org.headers,
    )
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    client.post(
        f"/v1/projects/{pid}/env-vars",
        json={"vars": [{"key": "API_TOKEN", "value": SECRET, "secret": True}]},
        headers=org.headers,
    )
    accepted = client.post(f"/v1/projects/{pid}/deploy", json={}, headers=org.headers).json()
    wait_for_job(client, accepted["links"]["job"].rsplit("/", 1)[-1], org.headers, timeout=120)
    dep = client.get(
        f"/v1/projects/{pid}/deployments/{accepted['deployment_id']}", headers=org.headers
    ).json()
    assert dep["status"] == "failed", dep
    assert dep["status_reason"].startswith("build_failed"), dep["status_reason"]
    assert SECRET not in dep["status_reason"] and "***" in dep["status_reason"]

    text = client.get(
        f"/v1/projects/{pid}/logs?tail=1000&service=build&deployment_id={dep['id']}",
        headers=org.headers,
    ).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and {ln["service"] for ln in lines} == {"build"}
    assert SECRET not in text
    printed = [ln["msg"] for ln in lines if "***" in ln["msg"]]
    assert printed, text  # pip did print the (expanded) requirement: masked
    with client.stream(
        "GET",
        f"/v1/projects/{pid}/logs?tail=1000&stream=true&service=build&deployment_id={dep['id']}",
        headers=org.headers,
    ) as stream:
        events = []
        for raw in stream.iter_lines():
            if raw.startswith("data: "):
                events.append(json.loads(raw[6:]))
            if len(events) >= len(lines):
                break
    assert events and all(SECRET not in e["msg"] for e in events)
    # nor at rest: the stored build log and the job's error are masked before they are written
    from projects.models import ProjectDeployment
    from store.db import session_scope

    with session_scope() as session:
        row = session.get(ProjectDeployment, dep["id"])
        assert row is not None and row.build_log
        stored = json.dumps(row.build_log)
    assert SECRET not in stored and "***" in stored
    job = client.get(accepted["links"]["job"], headers=org.headers).json()
    assert job["status"] == "failed" and SECRET not in json.dumps(job)
    # the repository itself was never the problem: the unmasked text came only from the build
    assert SECRET not in (repo / "requirements.txt").read_text()
    client.delete(f"/v1/projects/{pid}", headers=org.headers)
